package bridge

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
	"github.com/kbridge/kbridge/tracker"
)

// streamState is everything a refused append must leave as it was: the
// entries (IDs and fields), the groups (name, last-delivered-id, pending),
// and the keys of the stream's slot under its name.
type streamState struct {
	exists  bool
	entries []redis.XMessage
	groups  []redis.XInfoGroup
	keys    []string
}

func stateOf(t *testing.T, rdb *redis.Client, key string) streamState {
	t.Helper()
	ctx := context.Background()
	var st streamState
	n, err := rdb.Exists(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	st.exists = n == 1
	if st.exists {
		if st.entries, err = rdb.XRange(ctx, key, "-", "+").Result(); err != nil {
			t.Fatal(err)
		}
		if st.groups, err = rdb.XInfoGroups(ctx, key).Result(); err != nil {
			t.Fatal(err)
		}
		for i := range st.groups {
			// not faithful on miniredis, and not what an append changes
			st.groups[i].EntriesRead, st.groups[i].Lag = 0, 0
		}
		// miniredis lists them in map order
		slices.SortFunc(st.groups, func(a, b redis.XInfoGroup) int { return strings.Compare(a.Name, b.Name) })
	}
	if st.keys, err = rdb.Keys(ctx, key+"*").Result(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(st.keys)
	return st
}

// TestMultiAppendGuardRefusals: on the MULTI/EXEC path (stream_multi.go)
// each refusal of the guard — the stream missing, its top behind the
// expected one, a stray top (another program's entry, an entry deleted), a
// top at or above the log end — appends nothing and leaves the stream
// exactly as it was: the same entries, the same groups with the same
// last-delivered-ids and pending entries, and no append key. A top ahead
// but a record kbridge wrote skips exactly the entries up to it.
func TestMultiAppendGuardRefusals(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name     string
		setup    func(t *testing.T, s *stream, rdb *redis.Client)
		expected int64
		logEnd   int64
		lost     bool
		foreign  bool
	}{
		{"stream missing", func(t *testing.T, s *stream, rdb *redis.Client) {
			rdb.Del(ctx, s.key)
		}, 9, -1, true, false},
		{"top behind the expected one", func(t *testing.T, s *stream, rdb *redis.Client) {}, 12, -1, true, false},
		{"stray top: another program's entry", func(t *testing.T, s *stream, rdb *redis.Client) {
			if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: s.key, ID: "15-1", Values: []string{"foo", "bar"}}).Err(); err != nil {
				t.Fatal(err)
			}
		}, 9, 100, false, true},
		{"stray top: deleted entry", func(t *testing.T, s *stream, rdb *redis.Client) {
			mustAppend(t, s, 9, 10, 11)
			rdb.XDel(ctx, s.key, "11-1")
		}, 9, 100, false, true},
		{"top at the log end", func(t *testing.T, s *stream, rdb *redis.Client) {
			mustAppend(t, s, 9, 10, 11, 12)
		}, 9, 12, false, true},
		{"top above the log end", func(t *testing.T, s *stream, rdb *redis.Client) {
			mustAppend(t, s, 9, 10, 11, 12)
		}, 9, 11, false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, rdb := newStreamPath(t, 500, true)
			if err := s.ensure(ctx); err != nil {
				t.Fatal(err)
			}
			mustAppend(t, s, tracker.None, span(0, 9)...)
			// group a read 0..4 and holds them pending; b read nothing
			if err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "a", Consumer: "c", Streams: []string{s.key, ">"}, Count: 5}).Err(); err != nil {
				t.Fatal(err)
			}
			c.setup(t, s, rdb)
			before := stateOf(t, rdb, s.key)
			res, err := s.append(ctx, c.expected, c.logEnd, recs(span(10, 20)...))
			if err != nil {
				t.Fatal(err)
			}
			if res.added != 0 || res.lost != c.lost || res.foreign != c.foreign {
				t.Errorf("append: %+v; want nothing added, lost=%v foreign=%v", res, c.lost, c.foreign)
			}
			after := stateOf(t, rdb, s.key)
			if b, a := entriesText(before.entries), entriesText(after.entries); before.exists != after.exists || b != a {
				t.Errorf("the refused append changed the stream:\nbefore %v %s\nafter  %v %s", before.exists, b, after.exists, a)
			}
			if fmt.Sprint(before.groups) != fmt.Sprint(after.groups) {
				t.Errorf("the refused append changed the groups:\nbefore %+v\nafter  %+v", before.groups, after.groups)
			}
			if !slices.Equal(before.keys, after.keys) {
				t.Errorf("the refused append changed the keys: before %v, after %v", before.keys, after.keys)
			}
			t.Logf("refused (%+v); stream unchanged: %d entries, %d groups, keys %v", res, len(after.entries), len(after.groups), after.keys)
		})
	}

	t.Run("top ahead and ours: skips exactly up to it", func(t *testing.T) {
		s, rdb := newStreamPath(t, 500, true)
		if err := s.ensure(ctx); err != nil {
			t.Fatal(err)
		}
		mustAppend(t, s, tracker.None, span(0, 9)...)
		// a zombie (another ingest) appended 10..14 with other values
		zombie := recs(span(10, 14)...)
		for i := range zombie {
			zombie[i].Value = []byte("zombie")
		}
		if _, err := s.append(ctx, 9, -1, zombie); err != nil {
			t.Fatal(err)
		}
		before := stateOf(t, rdb, s.key)
		res, err := s.append(ctx, 9, 100, recs(span(10, 20)...))
		if err != nil || res.added != 6 || res.top != 20 || res.lost || res.foreign {
			t.Fatalf("append: %+v, %v; want 6 added (15..20), top 20", res, err)
		}
		after := stateOf(t, rdb, s.key)
		if fmt.Sprint(after.entries[:15]) != fmt.Sprint(before.entries) {
			t.Errorf("entries 0..14 changed")
		}
		if got := streamOffsets(t, rdb, s.key); !equal(got, span(0, 20)) {
			t.Errorf("stream %v, want 0..20", got)
		}
		if !slices.Equal(after.keys, []string{s.key}) {
			t.Errorf("keys %v, want the stream alone", after.keys)
		}
	})
}

// entriesText prints entries: ID, then the fields in name order, quoted.
func entriesText(es []redis.XMessage) string {
	var b strings.Builder
	for _, e := range es {
		b.WriteString(e.ID)
		names := slices.Sorted(maps.Keys(e.Values))
		for _, n := range names {
			fmt.Fprintf(&b, " %s=%q", n, fmt.Sprint(e.Values[n]))
		}
		b.WriteString("; ")
	}
	return b.String()
}

func mustAppend(t *testing.T, s *stream, expected int64, offsets ...int64) {
	t.Helper()
	res, err := s.append(context.Background(), expected, -1, recs(offsets...))
	if err != nil || res.lost || res.foreign {
		t.Fatalf("append %v: %+v, %v", offsets, res, err)
	}
}

// TestMultiAppendFallbackACL (real Redis): a user whose ACL rule predates
// the MULTI/EXEC path (no +multi, +exec or +rename) makes the start-up probe
// choose the append script, and says so once; an ingest whose rule loses one
// of them while it runs switches to the script at the first refused append
// (without EXEC or RENAME nothing lands; without MULTI the commands run one
// by one, the guard still first), the next append lands on top, and no
// append key is left.
func TestMultiAppendFallbackACL(t *testing.T) {
	testenv.RequireReal(t, "a redis-server with ACL users of the test's own")
	srv := testenv.StartRedisServer(t, "none")
	ctx := context.Background()
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer admin.Close()
	prefix := "kbm-" + testenv.Name(t)
	base := append([]string{"eval", "evalsha", "xadd", "xinfo|stream", "xinfo|groups", "xrange", "xgroup|create", "xgroup|setid",
		"sadd", "exists", "xreadgroup"}, multiAppendRedisCommands...)
	setUser := func(user string, omit string) *redis.Client {
		rule := []any{"acl", "setuser", user, "reset", "on", ">pw", "resetkeys", "~" + prefix + ":*", "resetchannels", "-@all"}
		for _, c := range base {
			if c != omit {
				rule = append(rule, "+"+c)
			}
		}
		if err := admin.Do(ctx, rule...).Err(); err != nil {
			t.Fatal(err)
		}
		c := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: user, Password: "pw"})
		t.Cleanup(func() { c.Close() })
		return c
	}
	for _, omit := range append([]string{""}, multiAppendRedisCommands...) {
		name := "with-all"
		if omit != "" {
			name = "without-" + omit
		}
		t.Run(name, func(t *testing.T) {
			user := "kbm-" + strings.TrimPrefix(name, "with-")
			rdb := setUser(user, omit)
			var logs strings.Builder
			in := &Ingest{cfg: Config{Redis: rdb, Prefix: prefix}, log: slog.New(slog.NewTextHandler(io.MultiWriter(&logs, tLog{t}), nil))}
			if err := in.probeAppendPath(ctx); err != nil {
				t.Fatal(err)
			}
			if want := omit == ""; in.appendMulti.Load() != want {
				t.Fatalf("probe: MULTI path %v, want %v", in.appendMulti.Load(), want)
			}
			if !strings.Contains(logs.String(), "append path:") || strings.Count(logs.String(), "append path:") != 1 {
				t.Errorf("the probe logs the append path once: %q", logs.String())
			}
			if omit != "" && !strings.Contains(logs.String(), strings.ToUpper(omit)) {
				t.Errorf("the log does not name %s: %q", strings.ToUpper(omit), logs.String())
			}
			if omit == "" {
				return
			}
			// The same user, with the MULTI path on as if the rule lost
			// the command after the probe.
			key := wire.StreamKey(prefix, "t"+omit, 0)
			m := &in.appendMulti
			m.Store(true)
			s := &stream{rdb: rdb, key: key, registry: wire.RegistryKey(prefix), groups: []string{"a"}, batchSize: 500, multi: m}
			if err := s.ensure(ctx); err != nil {
				t.Fatal(err)
			}
			mustAppend(t, &stream{rdb: admin, key: key, batchSize: 500}, tracker.None, span(0, 9)...)
			res, err := s.append(ctx, 9, -1, recs(span(10, 19)...))
			if !isNoPerm(err) {
				t.Fatalf("append without %s: %+v, %v; want a NOPERM error", omit, res, err)
			}
			if m.Load() {
				t.Errorf("still on the MULTI path after NOPERM")
			}
			res, err = s.append(ctx, 9, -1, recs(span(10, 19)...))
			if err != nil || res.lost || res.foreign || res.top != 19 {
				t.Fatalf("append with the script: %+v, %v; want top 19", res, err)
			}
			if got := streamOffsets(t, admin, key); !equal(got, span(0, 19)) {
				t.Errorf("stream %v, want 0..19", got)
			}
			if keys, _ := admin.Keys(ctx, key+"*").Result(); !slices.Equal(keys, []string{key}) {
				t.Errorf("keys %v, want the stream alone", keys)
			}
			t.Logf("without %s: NOPERM (%v), then the script appended 10..19", omit, err)
		})
	}
}

// TestDocsACLRuleCoversIngest: every command of IngestRedisCommands (MULTI,
// EXEC and RENAME included) is in docs/operations.md's ACL rule.
func TestDocsACLRuleCoversIngest(t *testing.T) {
	rule := testenv.DocsACLRule(t)
	for _, c := range IngestRedisCommands() {
		if !slices.Contains(rule, c) {
			t.Errorf("the ingest runs %s, not in the documented rule %v", c, rule)
		}
	}
}

// tLog writes to the test's log.
type tLog struct{ t *testing.T }

func (w tLog) Write(p []byte) (int, error) { w.t.Log(strings.TrimSpace(string(p))); return len(p), nil }
