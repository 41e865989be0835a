package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/wire"
	"github.com/kbridge/kbridge/worker"
)

// scenarios, in the order they start: with several at once, the long waits
// (lease, reclaim) first, and the three that handle many records (plain,
// decode, malformed) not side by side.
var scenarios = []scenario{
	{"lease", []string{"W11"}, scLease},
	{"plain", []string{"W2", "W3", "W4"}, scPlain},
	{"reclaim", []string{"W12", "W13", "W14", "W15"}, scReclaim},
	{"version", []string{"W1", "W19"}, scVersion},
	{"decode", []string{"W5"}, scDecode},
	{"retry", []string{"W8", "W9"}, scRetry},
	{"sigkill", []string{"W12"}, scSigkill},
	{"malformed", []string{"W6", "W7"}, scMalformed},
	{"ownership", []string{"W10"}, scOwnership},
	{"replay", []string{"W16"}, scReplay},
	{"shutdown", []string{"W17"}, scShutdown},
	{"shutdown-timeout", []string{"W18"}, scShutdownTimeout},
}

// ScenarioNames lists the scenarios in the order they run.
func ScenarioNames() []string {
	var out []string
	for _, s := range scenarios {
		out = append(out, s.name)
	}
	return out
}

// entryEvents groups events by entry ("<stream> <id>"), in file order.
func entryEvents(evs []Event) map[string][]Event {
	m := map[string][]Event{}
	for _, e := range evs {
		k := e.Stream + " " + e.ID
		m[k] = append(m[k], e)
	}
	return m
}

func ref(stream, id string) string { return stream + " " + id }

// starts returns the start events of an entry.
func starts(evs []Event) []Event {
	var out []Event
	for _, e := range evs {
		if e.Event == "start" {
			out = append(out, e)
		}
	}
	return out
}

// endedOK reports whether an entry has an end event with result ok.
func endedOK(evs []Event) bool {
	return slices.ContainsFunc(evs, func(e Event) bool { return e.Event == "end" && e.Result == "ok" })
}

func deliveries(evs []Event) []int64 {
	var out []int64
	for _, e := range starts(evs) {
		out = append(out, int64(e.Deliveries))
	}
	return out
}

func seq(from, to int64) []int64 {
	var out []int64
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

// scVersion: with a wire version the worker does not speak in Redis, it
// must exit non-zero without reading anything; without the version key (an
// ingest older than the key) it must run; and when the version changes
// while it runs, it must stop within VersionWait.
func scVersion(ctx context.Context, s *run) error {
	st := s.stream("version", 0)
	if err := s.createStream(ctx, st, true, Group); err != nil {
		return err
	}
	if err := s.addRecords(ctx, st, 0, "ok"); err != nil {
		return err
	}
	vkey := wire.VersionKey(s.prefix)
	if err := s.k.rdb.HSet(ctx, vkey, wire.FieldVersion, "999").Err(); err != nil {
		return err
	}
	w1, err := s.start("w1")
	if err != nil {
		return err
	}
	exited, code := w1.wait(s.k.cfg.Patience)
	evs := s.readEvents()
	groups, err := s.k.rdb.XInfoGroups(ctx, st).Result()
	if err != nil {
		return err
	}
	read := len(groups) != 1 || groups[0].LastDeliveredID != "0-0"
	s.check("W1", exited && code != 0 && len(evs) == 0 && !read,
		"wire version 999 in %s: want the worker to exit non-zero without reading; exited=%v status=%d, handler events %d, entries read %v",
		vkey, exited, code, len(evs), read)
	if !exited {
		return nil // still running: the rest would mix its reads with w2's
	}
	s.figure("exit status %d on wire version 999", code)
	s.procs = slices.DeleteFunc(s.procs, func(p *proc) bool { return p == w1 })
	// No version key: an ingest older than the key, version 1's layout.
	if err := s.k.rdb.Del(ctx, vkey).Err(); err != nil {
		return err
	}
	if _, err := s.start("w2"); err != nil {
		return err
	}
	handled := func() bool { return endedOK(entryEvents(s.readEvents())[ref(st, "0-1")]) }
	ok, err := s.until(ctx, s.k.cfg.Patience, handled)
	if err != nil {
		s.check("W1", false, "without the key %s (an ingest older than it): want the worker to run; %v", vkey, err)
		return nil
	}
	if !s.check("W1", ok, "without the key %s (an ingest older than it): want the record handled, not handled within %v", vkey, s.k.cfg.Patience) {
		return nil
	}
	// A newer ingest writes version 2 while the worker runs.
	if err := s.k.rdb.HSet(ctx, vkey, wire.FieldVersion, "2").Err(); err != nil {
		return err
	}
	t0 := time.Now()
	w2 := s.procs[len(s.procs)-1]
	exited, code = w2.wait(VersionWait)
	s.check("W19", exited && code != 0, "%s set to version 2 while the worker ran: want it to stop (non-zero exit) within %v (rule 1: check at each discovery); exited=%v status=%d",
		vkey, VersionWait, exited, code)
	if exited {
		s.figure("stopped %v after the version changed, exit status %d", time.Since(t0).Round(time.Millisecond), code)
	}
	return nil
}

// scPlain: records of three partitions, a fourth partition registered
// while the worker runs, and a registered stream without the group.
func scPlain(ctx context.Context, s *run) error {
	var streams []string
	total := 0
	for p := range 3 {
		st := s.stream("plain", p)
		streams = append(streams, st)
		if err := s.createStream(ctx, st, true, Group); err != nil {
			return err
		}
		values := make([]string, 12)
		for i := range values {
			values[i] = "ok"
			if i%3 == 1 {
				values[i] = "record " + strconv.Itoa(p) + "/" + strconv.Itoa(i)
			}
		}
		if err := s.addRecords(ctx, st, 0, values...); err != nil {
			return err
		}
		total += len(values)
	}
	foreign := s.stream("plain", 3) // registered, but only another group's
	if err := s.createStream(ctx, foreign, true, "other"); err != nil {
		return err
	}
	if err := s.addRecords(ctx, foreign, 0, "ok", "ok"); err != nil {
		return err
	}
	t0 := time.Now()
	if _, err := s.start("w1"); err != nil {
		return err
	}
	handled := func(streams []string) int {
		n := 0
		for k, evs := range entryEvents(s.readEvents()) {
			st, _, _ := strings.Cut(k, " ")
			if slices.Contains(streams, st) && endedOK(evs) {
				n++
			}
		}
		return n
	}
	ok, err := s.until(ctx, s.k.cfg.Patience, func() bool { return handled(streams) == total })
	if err != nil {
		return err
	}
	if !s.check("W2", ok, "handled %d of the %d records of 3 registered partitions within %v", handled(streams), total, s.k.cfg.Patience) {
		return nil
	}
	s.figure("%d records of 3 partitions handled in %v", total, time.Since(t0).Round(time.Millisecond))
	late := s.stream("plain", 4)
	if err := s.createStream(ctx, late, true, Group); err != nil {
		return err
	}
	if err := s.addRecords(ctx, late, 0, "ok", "ok", "ok", "ok", "ok"); err != nil {
		return err
	}
	streams = append(streams, late)
	total += 5
	t1 := time.Now()
	ok, err = s.until(ctx, s.k.cfg.Patience, func() bool { return handled(streams) == total })
	if err != nil {
		return err
	}
	s.check("W2", ok, "a partition registered while the worker ran: handled %d of its 5 records within %v", handled([]string{late}), s.k.cfg.Patience)
	if ok {
		s.figure("a partition registered while running: its records handled %v later", time.Since(t1).Round(time.Millisecond))
	}
	settled := func() bool {
		for _, st := range streams {
			if !s.settled(ctx, st) {
				return false
			}
		}
		return true
	}
	ok, err = s.until(ctx, s.k.cfg.Patience, settled)
	if err != nil {
		return err
	}
	s.check("W4", ok, "not every handled record was acknowledged within %v (something is still pending, or not read)", s.k.cfg.Patience)
	for k, evs := range entryEvents(s.readEvents()) {
		st, id, _ := strings.Cut(k, " ")
		if n := len(starts(evs)); n != 1 {
			s.check("W4", false, "%s %s handled %d times (no failure, no crash: want once)", st, id, n)
		}
		if st == foreign {
			s.check("W3", false, "handled %s of a stream where group %q does not exist", id, Group)
		}
	}
	has, err := s.hasGroup(ctx, foreign, Group)
	if err != nil {
		return err
	}
	s.check("W3", !has, "the worker created group %q on %s (a group made by a worker may start at $ and skip entries)", Group, foreign)
	return nil
}

// vectorStream returns a vector's stream key under the run's prefix.
func (s *run) vectorStream(f wire.VectorFile, v wire.Vector) string {
	return s.prefix + strings.TrimPrefix(v.Stream, f.Prefix)
}

// writeVectors writes the vectors into Redis, each in its own stream, the
// partition streams registered and with the group (and the replay streams
// with the group), and returns their stream keys.
func (s *run) writeVectors(ctx context.Context, f wire.VectorFile, vs []wire.Vector) ([]string, error) {
	var keys []string
	for _, v := range vs {
		st := s.vectorStream(f, v)
		keys = append(keys, st)
		if err := s.createStream(ctx, wire.PartitionStreamOf(st), true, Group); err != nil {
			return nil, err
		}
		if wire.IsReplayKey(st) {
			if err := s.createStream(ctx, st, false, Group); err != nil {
				return nil, err
			}
		}
		pairs, err := v.Pairs()
		if err != nil {
			return nil, err
		}
		if err := s.k.rdb.XAdd(ctx, &redis.XAddArgs{Stream: st, ID: v.ID, Values: pairs}).Err(); err != nil {
			return nil, fmt.Errorf("vector %q: XADD %s %s: %w", v.Name, st, v.ID, err)
		}
	}
	return keys, nil
}

// scDecode: every valid vector is handled and decoded as the vectors say.
func scDecode(ctx context.Context, s *run) error {
	f, err := wire.Vectors()
	if err != nil {
		return err
	}
	var vs []wire.Vector
	for _, v := range f.Vectors {
		if v.Record != nil {
			vs = append(vs, v)
		}
	}
	keys, err := s.writeVectors(ctx, f, vs)
	if err != nil {
		return err
	}
	if _, err := s.start("w1"); err != nil {
		return err
	}
	// Done when each vector is handled, or dead-lettered (a failure of W5
	// already: no need to wait for the rest of the patience).
	done := func() bool {
		byEntry := entryEvents(s.readEvents())
		for i, v := range vs {
			if !endedOK(byEntry[ref(keys[i], v.ID)]) {
				if _, dead, _ := s.deadLetterOf(ctx, keys[i], v.ID); !dead {
					return false
				}
			}
		}
		return true
	}
	if _, err := s.until(ctx, s.k.cfg.Patience, done); err != nil {
		return err
	}
	byEntry := entryEvents(s.readEvents())
	for i, v := range vs {
		st := starts(byEntry[ref(keys[i], v.ID)])
		if len(st) == 0 {
			if dl, dead, _ := s.deadLetterOf(ctx, keys[i], v.ID); dead {
				s.check("W5", false, "valid vector %q (%s %s) was dead-lettered (%v: %v), not handled", v.Name, keys[i], v.ID,
					dl.Values[wire.FieldDLQReason], dl.Values[wire.FieldDLQError])
			} else {
				s.check("W5", false, "vector %q (%s %s) was not handled within %v", v.Name, keys[i], v.ID, s.k.cfg.Patience)
			}
			continue
		}
		want := *v.Record
		want.Topic = v.Record.Topic
		got := wire.VectorRecord{Topic: st[0].Topic, Partition: int(st[0].Partition), Offset: itoa(int64(st[0].Offset)),
			Timestamp: itoa(int64(st[0].Timestamp)), Key: st[0].Key, Value: st[0].Value, Headers: st[0].Headers, Replayed: st[0].Replayed}
		if got.Headers == nil {
			got.Headers = [][2]*string{}
		}
		s.check("W5", reflect.DeepEqual(got, want), "vector %q: want %s, handler got %s", v.Name, showRecord(want), showRecord(got))
	}
	s.figure("%d valid vectors handled", len(vs))
	return nil
}

func showRecord(r wire.VectorRecord) string {
	b, _ := json.Marshal(r)
	return string(b)
}

// scMalformed: every malformed vector is dead-lettered (reason malformed,
// its fields kept) and acknowledged, and never handled.
func scMalformed(ctx context.Context, s *run) error {
	f, err := wire.Vectors()
	if err != nil {
		return err
	}
	var vs []wire.Vector
	for _, v := range f.Vectors {
		if v.Malformed != "" {
			vs = append(vs, v)
		}
	}
	keys, err := s.writeVectors(ctx, f, vs)
	if err != nil {
		return err
	}
	if _, err := s.start("w1"); err != nil {
		return err
	}
	// A vector whose stream key is not a partition stream key is never read
	// (rule 2 skips the registry member): it must not be handled, that is all.
	readable := func(i int) bool {
		_, _, _, err := wire.ParseStreamKey(wire.PartitionStreamOf(keys[i]))
		return err == nil
	}
	// Done when each vector is dead-lettered, or handled (a failure of W6 or
	// W7 already: no need to wait for the rest of the patience).
	done := func() bool {
		byEntry := entryEvents(s.readEvents())
		for i, v := range vs {
			if _, ok, _ := s.deadLetterOf(ctx, keys[i], v.ID); !ok && readable(i) && len(byEntry[ref(keys[i], v.ID)]) == 0 {
				return false
			}
		}
		return true
	}
	if _, err := s.until(ctx, s.k.cfg.Patience, done); err != nil {
		return err
	}
	byEntry := entryEvents(s.readEvents())
	n := 0
	for i, v := range vs {
		rule := "W6"
		if strings.HasPrefix(v.Name, "headers ") {
			rule = "W7"
		}
		st := keys[i]
		if evs := byEntry[ref(st, v.ID)]; len(evs) > 0 {
			s.check(rule, false, "malformed vector %q (%s) was handed to the handler", v.Name, v.Malformed)
			continue
		}
		if !readable(i) {
			s.check(rule, true, "")
			n++
			continue
		}
		dl, ok, err := s.deadLetterOf(ctx, st, v.ID)
		if err != nil {
			return err
		}
		if !s.check(rule, ok, "malformed vector %q (%s): no dead letter with dlq_stream %s and dlq_id %s within %v", v.Name, v.Malformed, st, v.ID, s.k.cfg.Patience) {
			continue
		}
		if p, pending, err := s.pending(ctx, st, v.ID); err != nil {
			return err
		} else if pending {
			s.check(rule, false, "malformed vector %q: dead-lettered but still pending (under %s)", v.Name, p.Consumer)
		}
		s.check(rule, dl.Values[wire.FieldDLQReason] == wire.ReasonMalformed && dl.Values[wire.FieldDLQGroup] == Group,
			"malformed vector %q: dead letter has dlq_reason %q, dlq_group %q; want %q, %q", v.Name,
			dl.Values[wire.FieldDLQReason], dl.Values[wire.FieldDLQGroup], wire.ReasonMalformed, Group)
		if msg := keptFields(v, dl); msg != "" {
			s.check(rule, false, "malformed vector %q: %s", v.Name, msg)
		}
		n++
	}
	s.figure("%d of %d malformed vectors dead-lettered", n, len(vs))
	return nil
}

// keptFields says which original field the dead letter lost or changed
// ("" if none). An entry of more than wire.MaxFields fields keeps only the
// contract's fields.
func keptFields(v wire.Vector, dl redis.XMessage) string {
	vals, err := v.Values()
	if err != nil {
		return err.Error()
	}
	n := 0
	for name := range vals {
		if !wire.IsDLQField(name) {
			n++
		}
	}
	contract := []string{wire.FieldTopic, wire.FieldPartition, wire.FieldOffset, wire.FieldTimestamp, wire.FieldKey, wire.FieldValue, wire.FieldHeaders}
	for name, val := range vals {
		if wire.IsDLQField(name) || (n > wire.MaxFields && !slices.Contains(contract, name)) {
			continue
		}
		if got, ok := dl.Values[name]; !ok || got != val {
			return fmt.Sprintf("the dead letter's field %q is %q, want the entry's %q", name, got, val)
		}
	}
	return ""
}

// checkDeadLetter checks the dead-letter fields of dl for an entry.
func (s *run) checkDeadLetter(rule string, what string, dl redis.XMessage, reason string, deliveries int64, stream, id string) {
	v := dl.Values
	want := map[string]string{
		wire.FieldDLQReason: reason, wire.FieldDLQGroup: Group,
		wire.FieldDLQDeliveries: itoa(deliveries), wire.FieldDLQStream: stream, wire.FieldDLQID: id,
	}
	for f, w := range want {
		s.check(rule, v[f] == w, "%s: dead letter field %s = %v, want %q", what, f, v[f], w)
	}
	_, hasErr := v[wire.FieldDLQError]
	_, hasConsumer := v[wire.FieldDLQConsumer]
	s.check(rule, hasErr && hasConsumer, "%s: dead letter without %s or %s", what, wire.FieldDLQError, wire.FieldDLQConsumer)
	ms, err := strconv.ParseInt(fmt.Sprint(v[wire.FieldDLQTime]), 10, 64)
	s.check(rule, err == nil && time.Since(time.UnixMilli(ms)).Abs() < time.Hour,
		"%s: dead letter field %s = %v, want Unix milliseconds of now", what, wire.FieldDLQTime, v[wire.FieldDLQTime])
}

// scRetry: a record that always fails is delivered exactly max times and
// dead-lettered; records that fail a few times and then succeed are
// acknowledged and not dead-lettered.
func scRetry(ctx context.Context, s *run) error {
	m := int64(s.k.cfg.MaxDeliveries)
	st := s.stream("retry", 0)
	if err := s.createStream(ctx, st, true, Group); err != nil {
		return err
	}
	lastChance := strings.Repeat("fail|", int(m-1)) + "ok"
	// The handlers of "waitfail:r" and "waitfail:s|ok" wait on each delivery
	// until the kit has compared their delivery count with Redis's.
	if err := s.addRecords(ctx, st, 0, "waitfail:r", lastChance, "waitfail:s|ok", "ok"); err != nil {
		return err
	}
	t0 := time.Now()
	p, err := s.start("w1")
	if err != nil {
		return err
	}
	answered := map[string]bool{}
	compareCounts := func() {
		for _, e := range s.readEvents() {
			verb := map[string]string{"0-1": "r", "2-1": "s"}[e.ID]
			k := e.ID + "/" + itoa(int64(e.Deliveries))
			if e.Event != "start" || e.Stream != st || verb == "" || answered[k] || (e.ID == "2-1" && e.Deliveries > 1) {
				continue
			}
			answered[k] = true
			pe, pend, err := s.pending(ctx, st, e.ID)
			s.check("W8", err == nil && pend && pe.Consumer == p.consumer && pe.Deliveries == int64(e.Deliveries),
				"%s: the handler runs delivery %d, but Redis's delivery count (XPENDING) is %d under consumer %q (pending=%v, %v): "+
					"a retry must be counted in Redis (redeliver.lua) or left to the reclaim, never counted by the worker alone",
				e.ID, e.Deliveries, pe.Deliveries, pe.Consumer, pend, err)
			_ = os.WriteFile(WaitFile(s.events, verb, int64(e.Deliveries)), nil, 0o644)
		}
	}
	done := func() bool {
		compareCounts()
		_, dead, _ := s.deadLetterOf(ctx, st, "0-1")
		return dead && s.settled(ctx, st)
	}
	ok, err := s.until(ctx, time.Duration(m)*s.k.reclaimWait(), done)
	if err != nil {
		return err
	}
	byEntry := entryEvents(s.readEvents())
	s.check("W8", slices.Equal(deliveries(byEntry[ref(st, "2-1")]), []int64{1, 2}) && endedOK(byEntry[ref(st, "2-1")]),
		"record \"waitfail:s|ok\": want deliveries [1 2] and success, got deliveries %v", deliveries(byEntry[ref(st, "2-1")]))
	s.check("W8", slices.Equal(deliveries(byEntry[ref(st, "1-1")]), seq(1, m)) && endedOK(byEntry[ref(st, "1-1")]),
		"record %q: want deliveries %v and success on the last, got %v", lastChance, seq(1, m), deliveries(byEntry[ref(st, "1-1")]))
	if _, dead, err := s.deadLetterOf(ctx, st, "1-1"); err != nil {
		return err
	} else {
		s.check("W9", !dead, "record %q succeeded on delivery %d (the maximum) but was dead-lettered", lastChance, m)
	}
	s.check("W9", slices.Equal(deliveries(byEntry[ref(st, "0-1")]), seq(1, m)),
		"record \"waitfail:r\" (always fails): want deliveries %v before the dead letter, got %v", seq(1, m), deliveries(byEntry[ref(st, "0-1")]))
	dl, dead, err := s.deadLetterOf(ctx, st, "0-1")
	if err != nil {
		return err
	}
	if s.check("W9", dead, "record \"waitfail:r\" not dead-lettered after %d deliveries (waited %v)", m, time.Since(t0).Round(time.Second)) {
		s.checkDeadLetter("W9", "record \"waitfail:r\"", dl, wire.ReasonMaxDeliveries, m, st, "0-1")
		s.check("W9", dl.Values[wire.FieldDLQConsumer] == p.consumer, "record \"waitfail:r\": dlq_consumer %v, want the worker's %s",
			dl.Values[wire.FieldDLQConsumer], p.consumer)
		vals := map[string]any{}
		r := wire.Record{Topic: "retry", Partition: 0, Offset: 0, Time: time.UnixMilli(1700000000000), Key: []byte("k0"), Value: []byte("waitfail:r")}
		f := r.AppendFields(nil)
		for i := 0; i+1 < len(f); i += 2 {
			vals[f[i].(string)] = f[i+1]
		}
		for name, want := range vals {
			s.check("W9", dl.Values[name] == want, "record \"waitfail:r\": dead letter field %s = %v, want the entry's %v", name, dl.Values[name], want)
		}
	}
	if !ok {
		n, _ := s.pendingCount(ctx, st)
		_, dead, _ := s.deadLetterOf(ctx, st, "0-1")
		s.check("W8", false, "not settled within %v: %d entries pending, all read %v, the failing record dead-lettered %v",
			time.Duration(m)*s.k.reclaimWait(), n, s.allRead(ctx, st), dead)
	}
	if ok {
		s.figure("%d deliveries and the dead letter of a failing record in %v", m, time.Since(t0).Round(time.Millisecond))
	}
	return nil
}

// scOwnership: an entry on its last delivery is taken by another consumer
// while its handler runs; when the handler fails, the worker must neither
// dead-letter nor acknowledge it. The handler ("waitfail:own") waits until
// the kit has taken the entry, and the kit takes it just after a lease
// extension of the worker: the worker's next one is about V/3 away, so the
// worker learns that it lost the entry only from deadletter.lua's refusal.
func scOwnership(ctx context.Context, s *run) error {
	m := int64(s.k.cfg.MaxDeliveries)
	vt := s.k.cfg.VisibilityTimeout
	st := s.stream("ownership", 0)
	if err := s.createStream(ctx, st, true, Group); err != nil {
		return err
	}
	if err := s.addRecords(ctx, st, 0, "waitfail:own"); err != nil {
		return err
	}
	// A dead consumer held it for m-1 deliveries: the worker reclaims it
	// for its last one.
	if err := s.readAs(ctx, st, "ghost", 1); err != nil {
		return err
	}
	if err := s.claim(ctx, st, "ghost", vt+time.Second, m-1, "0-1"); err != nil {
		return err
	}
	if err := s.addRecords(ctx, st, 1, "ok"); err != nil {
		return err
	}
	if _, err := s.start("w1"); err != nil {
		return err
	}
	started := func() bool {
		for _, e := range starts(entryEvents(s.readEvents())[ref(st, "0-1")]) {
			if int64(e.Deliveries) == m {
				return true
			}
		}
		return false
	}
	ok, err := s.until(ctx, s.k.reclaimWait(), started)
	if err != nil {
		return err
	}
	if !s.check("W10", ok, "the entry on its last delivery (count %d) was not reclaimed and started within %v", m, s.k.reclaimWait()) {
		return nil
	}
	// Wait for a lease extension (the idle time drops), at most V.
	lastIdle, extended := time.Duration(-1), false
	for deadline := time.Now().Add(vt); !extended && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		p, pend, err := s.pending(ctx, st, "0-1")
		if err != nil {
			return err
		}
		extended = pend && lastIdle >= 0 && p.Idle < lastIdle
		lastIdle = p.Idle
	}
	if err := s.claim(ctx, st, "kit-thief", -1, 0, "0-1"); err != nil {
		return err
	}
	stop := s.keepLease(ctx, st, "0-1", "kit-thief", 0, 0.25)
	defer stop()
	if err := os.WriteFile(WaitFile(s.events, "own", m), nil, 0o644); err != nil {
		return err
	}
	s.logf("took the entry from the worker (after a lease extension: %v) and let the handler fail", extended)
	ended := func() bool {
		return slices.ContainsFunc(entryEvents(s.readEvents())[ref(st, "0-1")], func(e Event) bool { return e.Event == "end" })
	}
	if ok, err = s.until(ctx, s.k.cfg.Patience, ended); err != nil {
		return err
	}
	if !s.check("W10", ok, "the handler (waitfail:own) did not end within %v of the kit's file", s.k.cfg.Patience) {
		return nil
	}
	// The worker's dead-letter attempt comes right after the handler's end.
	deadLettered := func() bool { _, dead, _ := s.deadLetterOf(ctx, st, "0-1"); return dead }
	if _, err := s.until(ctx, time.Second+vt/2, deadLettered); err != nil {
		return err
	}
	_, dead, err := s.deadLetterOf(ctx, st, "0-1")
	if err != nil {
		return err
	}
	p, pending, err := s.pending(ctx, st, "0-1")
	if err != nil {
		return err
	}
	s.check("W10", !dead, "dead-lettered an entry another consumer (kit-thief) had taken while the handler ran (dead-letter only with deadletter.lua, which checks ownership)")
	s.check("W10", pending && p.Consumer == "kit-thief", "the entry taken by kit-thief: want it pending under kit-thief, got pending=%v consumer=%q", pending, p.Consumer)
	return nil
}

// scLease: a handler three and a half visibility timeouts long, beside a
// reclaimer that claims every entry idle for the visibility timeout.
func scLease(ctx context.Context, s *run) error {
	vt := s.k.cfg.VisibilityTimeout
	st := s.stream("lease", 0)
	if err := s.createStream(ctx, st, true, Group); err != nil {
		return err
	}
	long := 7 * vt / 2
	if err := s.addRecords(ctx, st, 0, "sleep:"+itoa(long.Milliseconds()), "ok", "ok", "ok"); err != nil {
		return err
	}
	if _, err := s.start("w1"); err != nil {
		return err
	}
	evs := func() []Event { return entryEvents(s.readEvents())[ref(st, "0-1")] }
	ok, err := s.until(ctx, s.k.cfg.Patience, func() bool { return len(starts(evs())) > 0 })
	if err != nil {
		return err
	}
	if !s.check("W11", ok, "the long record was not started within %v", s.k.cfg.Patience) {
		return nil
	}
	var maxIdle time.Duration
	var stolen []string
	reclaimer := func() bool {
		if p, ok, _ := s.pending(ctx, st, "0-1"); ok {
			maxIdle = max(maxIdle, p.Idle)
		}
		res, _, err := s.k.rdb.XAutoClaimJustID(ctx, &redis.XAutoClaimArgs{Stream: st, Group: Group, Consumer: "kit-reclaimer",
			MinIdle: vt, Start: "0-0", Count: 10}).Result()
		if err == nil {
			stolen = append(stolen, res...)
		}
		return slices.ContainsFunc(evs(), func(e Event) bool { return e.Event == "end" })
	}
	ok, err = s.until(ctx, long+20*time.Second, reclaimer)
	if err != nil {
		return err
	}
	s.check("W11", ok, "the long record's handler did not end within %v", long+20*time.Second)
	slices.Sort(stolen)
	s.check("W11", len(stolen) == 0, "a reclaimer with the group's visibility timeout %v claimed %v: leases were not extended (the running entry's, or those read ahead)", vt, slices.Compact(stolen))
	s.figure("highest idle time of a running entry %v (visibility timeout %v)", maxIdle.Round(time.Millisecond), vt)
	if len(stolen) == 0 {
		ok, err = s.until(ctx, s.k.cfg.Patience, func() bool { return s.settled(ctx, st) })
		if err != nil {
			return err
		}
		s.check("W11", ok, "the records were not all acknowledged within %v of the long handler's end", s.k.cfg.Patience)
	}
	s.check("W11", len(starts(evs())) == 1, "the long record was handled %d times, want once", len(starts(evs())))
	return nil
}

// scReclaim: a dead consumer's entries: two to reclaim, one deleted from the
// stream meanwhile, one past max deliveries; a live consumer's entry that
// must stay where it is.
func scReclaim(ctx context.Context, s *run) error {
	vt, m := s.k.cfg.VisibilityTimeout, int64(s.k.cfg.MaxDeliveries)
	st := s.stream("reclaim", 0)
	if err := s.createStream(ctx, st, true, Group); err != nil {
		return err
	}
	if err := s.addRecords(ctx, st, 0, "ok", "ok", "ok", "ok", "ok"); err != nil {
		return err
	}
	if err := s.readAs(ctx, st, "ghost-1", 4); err != nil {
		return err
	}
	if err := s.readAs(ctx, st, "ghost-2", 1); err != nil {
		return err
	}
	if err := s.claim(ctx, st, "ghost-1", vt+5*time.Second, 0, "0-1", "1-1", "2-1"); err != nil {
		return err
	}
	if err := s.claim(ctx, st, "ghost-1", vt+5*time.Second, m, "3-1"); err != nil {
		return err
	}
	// ghost-1 ran 3-1 m times (docs/wire.md rule 8: a worker that reads
	// ahead decides on the runs recorded in <stream>:runs, one that does not
	// on the delivery count; both must dead-letter it).
	if err := s.k.rdb.HSet(ctx, wire.RunsKey(st, Group), "3-1", m).Err(); err != nil {
		return err
	}
	if err := s.k.rdb.XDel(ctx, st, "2-1").Err(); err != nil {
		return err
	}
	if err := s.claim(ctx, st, "ghost-2", vt*65/100, 0, "4-1"); err != nil {
		return err
	}
	stop := s.keepLease(ctx, st, "4-1", "ghost-2", 0.65, 0.75)
	defer stop()
	if err := s.addRecords(ctx, st, 5, "ok"); err != nil {
		return err
	}
	t0 := time.Now()
	if _, err := s.start("w1"); err != nil {
		return err
	}
	handled := func(id string) bool { return endedOK(entryEvents(s.readEvents())[ref(st, id)]) }
	done := func() bool {
		_, dead, _ := s.deadLetterOf(ctx, st, "3-1")
		_, pend, _ := s.pending(ctx, st, "2-1")
		return handled("0-1") && handled("1-1") && handled("5-1") && dead && !pend
	}
	ok, err := s.until(ctx, s.k.reclaimWait(), done)
	if err != nil {
		return err
	}
	took := time.Since(t0)
	// The live entry (its idle time kept between 0.65 V and 0.75 V: set back
	// to 0.65 V whenever it reaches 0.75 V) must still be ghost-2's a
	// visibility timeout later. A reclaim with a minimum idle time up to
	// 0.65 V takes it whenever it runs; the 0.25 V margin is for a loaded
	// machine.
	if _, err := s.until(ctx, vt+time.Second, func() bool { return false }); err != nil {
		return err
	}
	byEntry := entryEvents(s.readEvents())
	for _, id := range []string{"0-1", "1-1"} {
		d := deliveries(byEntry[ref(st, id)])
		s.check("W12", handled(id) && len(d) > 0 && d[0] >= 2, "a dead consumer's entry %s (idle %v): want it reclaimed and handled with delivery count >= 2, got deliveries %v",
			id, vt+5*time.Second, d)
		if _, pend, err := s.pending(ctx, st, id); err != nil {
			return err
		} else if handled(id) {
			s.check("W12", !pend, "reclaimed entry %s still pending after it was handled", id)
		}
	}
	if ok {
		s.figure("a dead consumer's entries reclaimed and handled %v after the worker started", took.Round(time.Millisecond))
	}
	p, pend, err := s.pending(ctx, st, "4-1")
	if err != nil {
		return err
	}
	s.check("W13", pend && p.Consumer == "ghost-2" && len(byEntry[ref(st, "4-1")]) == 0,
		"an entry whose idle time stayed between %v of the visibility timeout %v was taken (a reclaim with a shorter minimum idle time): pending=%v consumer=%q handler events=%d",
		"65% and 75%", vt, pend, p.Consumer, len(byEntry[ref(st, "4-1")]))
	_, pend2, err := s.pending(ctx, st, "2-1")
	if err != nil {
		return err
	}
	s.check("W14", !pend2 && len(byEntry[ref(st, "2-1")]) == 0 && handled("5-1"),
		"a pending entry deleted from the stream: want it gone from the pending list, never handled, and the worker going on; pending=%v handled=%d later record handled=%v",
		pend2, len(byEntry[ref(st, "2-1")]), handled("5-1"))
	dl, dead, err := s.deadLetterOf(ctx, st, "3-1")
	if err != nil {
		return err
	}
	if s.check("W15", dead && len(byEntry[ref(st, "3-1")]) == 0, "an entry reclaimed with delivery count %d > %d (and %d runs recorded): want a dead letter without running it; dead-lettered=%v handler runs=%d",
		m+1, m, m, dead, len(starts(byEntry[ref(st, "3-1")]))) {
		s.checkDeadLetter("W15", "entry reclaimed past max deliveries", dl, wire.ReasonMaxDeliveries, m+1, st, "3-1")
	}
	return nil
}

// scSigkill: a worker is SIGKILLed in the middle of a handler; another
// worker reclaims the entry after the visibility timeout.
func scSigkill(ctx context.Context, s *run) error {
	st := s.stream("sigkill", 0)
	if err := s.createStream(ctx, st, true, Group); err != nil {
		return err
	}
	if err := s.addRecords(ctx, st, 0, "sleep:60000|ok", "ok", "ok", "ok"); err != nil {
		return err
	}
	w1, err := s.start("w1")
	if err != nil {
		return err
	}
	startedBy := func(worker string) bool {
		return slices.ContainsFunc(entryEvents(s.readEvents())[ref(st, "0-1")], func(e Event) bool { return e.Event == "start" && e.Worker == worker })
	}
	ok, err := s.until(ctx, s.k.cfg.Patience, func() bool { return startedBy("w1") })
	if err != nil {
		return err
	}
	if !s.check("W12", ok, "the first worker did not start the record within %v", s.k.cfg.Patience) {
		return nil
	}
	w1.kill()
	if done, _ := w1.wait(10 * time.Second); !done {
		return fmt.Errorf("worker w1 did not die of SIGKILL")
	}
	s.procs = slices.DeleteFunc(s.procs, func(p *proc) bool { return p == w1 })
	t0 := time.Now()
	if _, err := s.start("w2"); err != nil {
		return err
	}
	ok, err = s.until(ctx, s.k.reclaimWait(), func() bool { return startedBy("w2") })
	if err != nil {
		return err
	}
	took := time.Since(t0)
	if !s.check("W12", ok, "the entry of the SIGKILLed worker was not reclaimed within %v", s.k.reclaimWait()) {
		return nil
	}
	s.figure("a SIGKILLed worker's entry reclaimed %v after the kill (visibility timeout %v)", took.Round(time.Millisecond), s.k.cfg.VisibilityTimeout)
	ok, err = s.until(ctx, s.k.cfg.Patience, func() bool { return s.settled(ctx, st) })
	if err != nil {
		return err
	}
	s.check("W12", ok, "after the reclaim, not every record was handled and acknowledged within %v", s.k.cfg.Patience)
	return nil
}

// scReplay: dead letters replayed with worker.ReplayDeadLetters (what
// "kbridge dlq replay" runs): one of this group to handle, one of another
// group to acknowledge unhandled, one that fails again, and one without
// dlq_group (written by another program) to handle.
func scReplay(ctx context.Context, s *run) error {
	m := int64(s.k.cfg.MaxDeliveries)
	ps := s.stream("replay", 0)
	if err := s.createStream(ctx, ps, true, Group); err != nil {
		return err
	}
	if err := s.addRecords(ctx, ps, 0, "ok"); err != nil {
		return err
	}
	if _, err := s.start("w1"); err != nil {
		return err
	}
	for i, d := range []struct {
		group, value string
	}{{Group, "ok"}, {"other", "ok"}, {Group, "fail"}, {"", "ok"}} {
		o := int64(10 + i)
		r := wire.Record{Topic: "replay", Partition: 0, Offset: o, Time: time.UnixMilli(1700000000000), Value: []byte(d.value)}
		orig := map[string]any{}
		f := r.AppendFields(nil)
		for j := 0; j+1 < len(f); j += 2 {
			orig[f[j].(string)] = f[j+1]
		}
		fields := wire.DeadLetterFields(orig, wire.DLQInfo{Reason: wire.ReasonMaxDeliveries, Error: "earlier failure", Group: d.group,
			Consumer: "gone", Deliveries: m, Stream: ps, ID: wire.EntryID(o), Time: time.Now()})
		if d.group == "" {
			i := slices.Index(fields, any(wire.FieldDLQGroup))
			fields = slices.Delete(fields, i, i+2)
		}
		if err := s.k.rdb.XAdd(ctx, &redis.XAddArgs{Stream: wire.DLQKey(ps), Values: fields}).Err(); err != nil {
			return err
		}
	}
	dls, err := worker.ListDeadLetters(ctx, s.k.rdb, s.prefix, worker.Filter{})
	if err != nil {
		return err
	}
	if n, err := worker.ReplayDeadLetters(ctx, s.k.rdb, dls); err != nil || n != 4 {
		return fmt.Errorf("replay: %d of 4 replayed: %v", n, err)
	}
	rs := wire.ReplayKey(ps)
	s.track(rs)
	entries, err := s.k.rdb.XRange(ctx, rs, "-", "+").Result()
	if err != nil || len(entries) != 4 {
		return fmt.Errorf("replay stream %s: %d entries, %v", rs, len(entries), err)
	}
	ids := map[string]string{} // offset → replay ID
	for _, e := range entries {
		ids[fmt.Sprint(e.Values[wire.FieldOffset])] = e.ID
	}
	t0 := time.Now()
	done := func() bool {
		_, dead, _ := s.deadLetterOf(ctx, rs, ids["12"])
		return dead && s.settled(ctx, rs)
	}
	ok, err := s.until(ctx, time.Duration(m)*s.k.reclaimWait(), done)
	if err != nil {
		return err
	}
	s.check("W16", ok, "the replay stream was not settled (handled, acknowledged, dead-lettered) within %v", time.Duration(m)*s.k.reclaimWait())
	if ok {
		s.figure("4 replayed dead letters settled in %v", time.Since(t0).Round(time.Millisecond))
	}
	byEntry := entryEvents(s.readEvents())
	mine := starts(byEntry[ref(rs, ids["10"])])
	s.check("W16", len(mine) == 1 && mine[0].Offset == 10 && mine[0].Replayed && endedOK(byEntry[ref(rs, ids["10"])]),
		"replayed dead letter of offset 10 (replay ID %s): want it handled once with offset 10 and replayed=true, got %+v", ids["10"], mine)
	orphan := starts(byEntry[ref(rs, ids["13"])])
	s.check("W16", len(orphan) == 1 && orphan[0].Offset == 13 && orphan[0].Replayed && endedOK(byEntry[ref(rs, ids["13"])]),
		"replayed entry without dlq_group (offset 13, replay ID %s): want it handled once, as this group's, got %+v", ids["13"], orphan)
	s.check("W16", len(byEntry[ref(rs, ids["11"])]) == 0,
		"a replayed dead letter of group \"other\" was handled by group %q (it processed that record already)", Group)
	s.check("W16", slices.Equal(deliveries(byEntry[ref(rs, ids["12"])]), seq(1, m)),
		"replayed dead letter that fails again: want deliveries %v, got %v", seq(1, m), deliveries(byEntry[ref(rs, ids["12"])]))
	if dl, dead, err := s.deadLetterOf(ctx, rs, ids["12"]); err != nil {
		return err
	} else if s.check("W16", dead, "a replayed dead letter that failed %d times again is not in %s", m, wire.DLQKey(ps)) {
		s.checkDeadLetter("W16", "replayed dead letter failing again", dl, wire.ReasonMaxDeliveries, m, rs, ids["12"])
	}
	n, err := s.k.rdb.Exists(ctx, wire.DLQKey(rs)).Result()
	if err != nil {
		return err
	}
	s.check("W16", n == 0, "dead letters of a replay stream went to %s; want the partition's %s", wire.DLQKey(rs), wire.DLQKey(ps))
	return nil
}

// scShutdown: SIGTERM while a handler runs.
func scShutdown(ctx context.Context, s *run) error {
	st := s.stream("shutdown", 0)
	if err := s.createStream(ctx, st, true, Group); err != nil {
		return err
	}
	if err := s.addRecords(ctx, st, 0, "sleep:1500", "ok", "ok"); err != nil {
		return err
	}
	p, err := s.start("w1")
	if err != nil {
		return err
	}
	started := func() bool { return len(starts(entryEvents(s.readEvents())[ref(st, "0-1")])) > 0 }
	ok, err := s.until(ctx, s.k.cfg.Patience, started)
	if err != nil {
		return err
	}
	if !s.check("W17", ok, "the record was not started within %v", s.k.cfg.Patience) {
		return nil
	}
	p.signal(syscall.SIGTERM)
	t0 := time.Now()
	exited, code := p.wait(s.k.cfg.ShutdownTimeout + 10*time.Second)
	s.check("W17", exited && code == 0, "SIGTERM with a handler of 1.5s running (shutdown timeout %v): want exit status 0 within %v; exited=%v status=%d",
		s.k.cfg.ShutdownTimeout, s.k.cfg.ShutdownTimeout+10*time.Second, exited, code)
	if exited {
		s.figure("exit %d, %v after SIGTERM", code, time.Since(t0).Round(time.Millisecond))
	}
	byEntry := entryEvents(s.readEvents())
	s.check("W17", endedOK(byEntry[ref(st, "0-1")]), "the running handler did not finish after SIGTERM")
	for k, evs := range byEntry {
		if len(starts(evs)) > 0 && !slices.ContainsFunc(evs, func(e Event) bool { return e.Event == "end" }) {
			s.check("W17", false, "handler of %s started and never ended before the exit", k)
		}
		if endedOK(evs) {
			_, id, _ := strings.Cut(k, " ")
			if _, pend, err := s.pending(ctx, st, id); err != nil {
				return err
			} else {
				s.check("W17", !pend, "%s was handled but is still pending after the exit (the last acknowledgements were not sent)", id)
			}
		}
	}
	n, err := s.pendingCount(ctx, st)
	if err != nil {
		return err
	}
	c, found, err := s.consumer(ctx, st, p.consumer)
	if err != nil {
		return err
	}
	// Entries handed back with unclaim.lua are pending under the consumer
	// "handed-back" (rule 13); the rest must be its own consumer's, which
	// stays only if it has some.
	hb, hbFound, err := s.consumer(ctx, st, "handed-back")
	if err != nil {
		return err
	}
	var own, handed int64
	if found {
		own = c.Pending
	}
	if hbFound {
		handed = hb.Pending
	}
	if own == 0 {
		s.check("W17", !found, "the worker exited with nothing pending under its consumer but left its consumer %s in the group", p.consumer)
	}
	s.check("W17", own+handed == n, "entries pending after the exit (%d) are neither its consumer's (consumer found=%v, pending %d) nor handed back (%d)", n, found, own, handed)
	return nil
}

// scShutdownTimeout: SIGTERM while a handler runs longer than the shutdown
// timeout.
func scShutdownTimeout(ctx context.Context, s *run) error {
	sd := s.k.cfg.ShutdownTimeout
	st := s.stream("shutdown-timeout", 0)
	if err := s.createStream(ctx, st, true, Group); err != nil {
		return err
	}
	if err := s.addRecords(ctx, st, 0, "sleep:"+itoa((sd+60*time.Second).Milliseconds())+"|ok"); err != nil {
		return err
	}
	p, err := s.start("w1")
	if err != nil {
		return err
	}
	started := func() bool { return len(starts(entryEvents(s.readEvents())[ref(st, "0-1")])) > 0 }
	ok, err := s.until(ctx, s.k.cfg.Patience, started)
	if err != nil {
		return err
	}
	if !s.check("W18", ok, "the record was not started within %v", s.k.cfg.Patience) {
		return nil
	}
	p.signal(syscall.SIGTERM)
	t0 := time.Now()
	exited, code := p.wait(sd + 10*time.Second)
	s.check("W18", exited && code != 0, "SIGTERM with a handler longer than the shutdown timeout %v: want a non-zero exit within %v; exited=%v status=%d",
		sd, sd+10*time.Second, exited, code)
	if exited {
		s.figure("exit %d, %v after SIGTERM (shutdown timeout %v)", code, time.Since(t0).Round(time.Millisecond), sd)
	}
	pe, pend, err := s.pending(ctx, st, "0-1")
	if err != nil {
		return err
	}
	_, dead, err := s.deadLetterOf(ctx, st, "0-1")
	if err != nil {
		return err
	}
	s.check("W18", pend && pe.Consumer == p.consumer && !dead,
		"the unfinished entry: want it pending under %s and not dead-lettered; pending=%v consumer=%q dead-lettered=%v", p.consumer, pend, pe.Consumer, dead)
	_, found, err := s.consumer(ctx, st, p.consumer)
	if err != nil {
		return err
	}
	s.check("W18", found, "the worker deleted its consumer %s while it had an entry pending (XGROUP DELCONSUMER drops pending entries)", p.consumer)
	return nil
}
