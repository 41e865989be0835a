package worker

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// TestReplay: a poison record is dead-lettered; ReplayDeadLetters moves it
// to the replay stream, where the group that gave up gets it again with a
// fresh delivery count (and the error it was dead-lettered with) and a fixed
// handler completes it. Another group on the same partition, which had
// processed the record, does not see it again.
func TestReplay(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0, "workers", "audit")
	e.add(t, s, 0, 5)
	ctx := context.Background()
	var fixed atomic.Bool
	var replayed atomic.Pointer[Message]
	var auditCalls atomic.Int64
	cfg := e.config(func(ctx context.Context, m *Message) error {
		if m.Offset == 2 && !fixed.Load() {
			return errors.New("bug #12")
		}
		if m.Replayed {
			c := *m
			replayed.Store(&c)
		}
		return nil
	})
	cfg.MaxDeliveries = 2
	w := mustNew(t, cfg)
	stop := running(t, w)
	audit := e.config(func(ctx context.Context, m *Message) error { auditCalls.Add(1); return nil })
	audit.Group = "audit"
	wa := mustNew(t, audit)
	stopAudit := running(t, wa)
	testenv.Eventually(t, 10*time.Second, func() bool {
		n, _ := e.rdb.XLen(ctx, wire.DLQKey(s)).Result()
		return n == 1 && e.pending(t, s, "workers") == 0 && auditCalls.Load() == 5
	}, "poison record not dead-lettered")

	dls, err := ListDeadLetters(ctx, e.rdb, e.prefix, Filter{Topic: "t"})
	if err != nil || len(dls) != 1 {
		t.Fatalf("ListDeadLetters = %d, %v; want 1", len(dls), err)
	}
	if got, err := GetDeadLetter(ctx, e.rdb, e.prefix, dls[0].Ref); err != nil || got.Offset != 2 || string(got.Value) != "v2" {
		t.Fatalf("GetDeadLetter(%s) = %+v, %v; want offset 2, value v2", dls[0].Ref, got, err)
	}
	fixed.Store(true)
	n, err := ReplayDeadLetters(ctx, e.rdb, dls)
	if err != nil || n != 1 {
		t.Fatalf("ReplayDeadLetters = %d, %v; want 1", n, err)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return replayed.Load() != nil }, "replayed record not handled")
	m := replayed.Load()
	if m.Offset != 2 || m.Deliveries != 1 || m.DeadLetterError != "bug #12" || m.Stream != wire.ReplayKey(s) {
		t.Errorf("replayed message = offset %d, deliveries %d, dead-letter error %q, stream %s; want 2, 1, %q, %s",
			m.Offset, m.Deliveries, m.DeadLetterError, m.Stream, "bug #12", wire.ReplayKey(s))
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return e.pending(t, wire.ReplayKey(s), "workers") == 0 }, "replayed entry not acknowledged")
	if n, _ := e.rdb.XLen(ctx, wire.DLQKey(s)).Result(); n != 0 {
		t.Errorf("dead letters after replay = %d, want 0", n)
	}
	stop()
	stopAudit()
	if c := auditCalls.Load(); c != 5 {
		t.Errorf("audit group handled %d records, want 5 (the replay is not for it)", c)
	}
	if _, err := GetDeadLetter(ctx, e.rdb, e.prefix, dls[0].Ref); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetDeadLetter after replay = %v, want ErrNotFound", err)
	}
	// The next replay trims what every group acknowledged.
	if err := TrimReplay(ctx, e.rdb, wire.ReplayKey(s)); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.rdb.XLen(ctx, wire.ReplayKey(s)).Result(); n != 0 {
		t.Errorf("replay stream length after trim = %d, want 0", n)
	}
}

func TestParseRef(t *testing.T) {
	for _, tt := range []struct {
		ref   string
		topic string
		part  int
		id    string
		ok    bool
	}{
		{"orders:3/1718000000000-0", "orders", 3, "1718000000000-0", true},
		{"a.b-c:0/1-1", "a.b-c", 0, "1-1", true},
		{"orders/1-0", "", 0, "", false},
		{"orders:x/1-0", "", 0, "", false},
		{"orders:1/", "", 0, "", false},
		{"orders:1/abc", "", 0, "", false},
	} {
		t.Run(tt.ref, func(t *testing.T) {
			topic, part, id, err := ParseRef(tt.ref)
			if (err == nil) != tt.ok || topic != tt.topic || part != tt.part || id != tt.id {
				t.Errorf("ParseRef(%q) = %q, %d, %q, %v; want %q, %d, %q, ok=%v", tt.ref, topic, part, id, err, tt.topic, tt.part, tt.id, tt.ok)
			}
		})
	}
}
