package bridge_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// TestStrayRunbookWithoutRestart (issue 7 point 7; found by review as a
// loss of 50 of 50 records): the runbook of docs/operations.md ("A stalled
// partition") applied while the same ingest keeps running — no restart in
// between, unlike TestStrayEntryStalls. A worker was delivered (and acked)
// the stray entry, so group "workers" has last-delivered-id = the stray ID.
// XDEL + XSETID back to the ingest's own top: before the stall lifts the
// ingest sets the group back to the new top, or the records appended next
// (IDs below its last-delivered-id) would never be delivered while its
// frontier let the commit pass them.
func TestStrayRunbookWithoutRestart(t *testing.T) {
	e := newEnv(t, 1)
	if e.redis.Mini != nil {
		t.Skip("miniredis has no XSETID")
	}
	ctx := context.Background()
	testenv.Produce(t, e.brokers, e.topic, 0, 100)
	cfg := e.config(t)
	in := startIngest(t, cfg)
	l := newLedger()
	e.ackAll(t, l)
	end := testenv.LogEnd(t, e.brokers, e.topic, 1)
	testenv.Eventually(t, 60*time.Second, func() bool { return e.committed(t, 0) == end[0] },
		"commit did not reach the log end %v", end)

	top := end[0] - 1
	stray := wire.EntryID(top + 100)
	if err := e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: e.stream(0), ID: stray, Values: []string{"foo", "bar"}}).Err(); err != nil {
		t.Fatal(err)
	}
	stalled := func() string {
		for _, p := range in.Stats().Partitions {
			return p.Stalled
		}
		return ""
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return stalled() != "" }, "did not stall on %s", stray)
	// The worker was delivered the stray entry (and acked it).
	testenv.Eventually(t, 30*time.Second, func() bool {
		gs, err := e.rdb.XInfoGroups(ctx, e.stream(0)).Result()
		return err == nil && len(gs) == 1 && gs[0].LastDeliveredID == stray && gs[0].Pending == 0
	}, "the worker did not read the stray entry")

	// The runbook, on the running ingest.
	if err := e.rdb.XDel(ctx, e.stream(0), stray).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.Do(ctx, "XSETID", e.stream(0), wire.EntryID(top)).Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return stalled() == "" }, "the stall did not lift")
	gs, err := e.rdb.XInfoGroups(ctx, e.stream(0)).Result()
	if err != nil || len(gs) != 1 || gs[0].LastDeliveredID != wire.EntryID(top) {
		t.Errorf("after the stall lifted: want group workers set back to %s, got %+v, %v", wire.EntryID(top), gs, err)
	}

	// New records after the runbook.
	testenv.Produce(t, e.brokers, e.topic, 100, 50)
	end2 := testenv.LogEnd(t, e.brokers, e.topic, 1)
	testenv.Eventually(t, 60*time.Second, func() bool { return e.committed(t, 0) == end2[0] },
		"commit did not reach the log end %v (committed %d)", end2, e.committed(t, 0))
	gs, _ = e.rdb.XInfoGroups(ctx, e.stream(0)).Result()
	lost, dups := l.check(end2)
	t.Logf("runbook on the running ingest: committed %d (log end %d), lost=%d duplicates=%d", e.committed(t, 0), end2[0], lost, dups)
	if lost != 0 {
		t.Errorf("LOSS: committed %d (log end %d) but the worker never got %d records appended after the runbook; group state %+v",
			e.committed(t, 0), end2[0], lost, gs)
	}
}

// TestStrayDeletedTopStaysStalled (issue 7 point 7; found by review as a
// loss of 131 records): the operator deletes the stray entry (XDEL) but does
// not set the stream's top back — step 2 of the runbook half done, or a tool
// that XADDs and XDELs. The last-generated-id stays at the stray ID with its
// entry gone. kbridge never deletes an entry above what it appended (nor at
// or above its commit: it trims below it), so that top is no record either:
// the partition stays stalled and commits nothing past what it appended —
// the append script, had it run, would have skipped every record up to the
// stray offset as "already there". Then XSETID to the top the reason names
// lifts it, and nothing is lost.
func TestStrayDeletedTopStaysStalled(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	testenv.Produce(t, e.brokers, e.topic, 0, 300)
	cfg := e.config(t)
	cfg.PartitionCap, cfg.LowWatermark = 20, 10
	in := startIngest(t, cfg)
	// No worker yet: the ingest appends 20 and pauses.
	testenv.Eventually(t, 60*time.Second, func() bool {
		for _, p := range in.Stats().Partitions {
			return p.Paused && p.Top == 19
		}
		return false
	}, "ingest did not pause at the cap")

	stray := wire.EntryID(150)
	if err := e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: e.stream(0), ID: stray, Values: []string{"foo", "bar"}}).Err(); err != nil {
		t.Fatal(err)
	}
	stalled := func() string {
		for _, p := range in.Stats().Partitions {
			return p.Stalled
		}
		return ""
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return stalled() != "" }, "did not stall on %s", stray)
	if err := e.rdb.XDel(ctx, e.stream(0), stray).Err(); err != nil {
		t.Fatal(err)
	}
	// The partition stays stalled (committing nothing past what it
	// appended) while the workers drain what it did append, and names the
	// top to set back to.
	l := e.startWork(t, 0)
	testenv.Eventually(t, 30*time.Second, func() bool { return strings.Contains(stalled(), "is gone") },
		"the stall does not say the stray's entry is gone: %q", stalled())
	testenv.Eventually(t, 30*time.Second, func() bool { return l.total() >= 20 }, "processed %d of the 20 appended", l.total())
	if lifts(stalled, 5*time.Second) {
		t.Fatalf("XDEL without XSETID: the stall lifted (the top %s is still above the records, its entry gone)", stray)
	}
	if c := e.committed(t, 0); c > 20 {
		t.Errorf("still stalled but committed %d, past the 20 records appended", c)
	}
	if !strings.Contains(stalled(), "back to "+wire.EntryID(19)) {
		t.Errorf("the reason does not name the top to set back to (%s): %q", wire.EntryID(19), stalled())
	}
	t.Logf("XDEL without XSETID: stays stalled, committed %d; %s", e.committed(t, 0), stalled())
	if e.redis.Mini != nil {
		return // miniredis has no XSETID
	}
	if err := e.rdb.Do(ctx, "XSETID", e.stream(0), wire.EntryID(19)).Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return stalled() == "" }, "XSETID %s did not lift the stall", wire.EntryID(19))
	end := testenv.LogEnd(t, e.brokers, e.topic, 1)
	testenv.Eventually(t, 60*time.Second, func() bool { return e.committed(t, 0) == end[0] },
		"commit did not reach the log end %v (committed %d)", end, e.committed(t, 0))
	lost, dups := l.check(end)
	t.Logf("after XSETID: committed %d (log end %d), lost=%d duplicates=%d", e.committed(t, 0), end[0], lost, dups)
	if lost != 0 {
		t.Errorf("LOSS: committed %d (log end %d), %d records never delivered", e.committed(t, 0), end[0], lost)
	}
}

// TestStrayRunbookFollowsStatusTop (issue 7 point 7; found by review as a
// loss of 51 records): the stray entry is found at assignment (a restart
// after it was written), below the log end. The runbook tells the operator to
// XSETID the stream's top back to the status hash's top field: that must be
// the highest record below the stray (here: the commit - 1, the records
// below it trimmed), never the stray's own offset — XSETID to that would
// leave the top where it was with its entry gone, and fetching from above it
// would skip every record between the commit and the stray offset. Following
// the runbook literally lifts the stall and loses nothing.
func TestStrayRunbookFollowsStatusTop(t *testing.T) {
	e := newEnv(t, 1)
	if e.redis.Mini != nil {
		t.Skip("miniredis has no XSETID")
	}
	ctx := context.Background()
	testenv.Produce(t, e.brokers, e.topic, 0, 100)
	cfg := e.config(t)
	first := startIngest(t, cfg)
	l := newLedger()
	e.ackAll(t, l)
	testenv.Eventually(t, 60*time.Second, func() bool { return e.committed(t, 0) == 100 }, "commit did not reach 100")
	first.stop(t)

	testenv.Produce(t, e.brokers, e.topic, 100, 100) // log end 200
	stray := wire.EntryID(150)
	if err := e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: e.stream(0), ID: stray, Values: []string{"foo", "bar"}}).Err(); err != nil {
		t.Fatal(err)
	}
	second := startIngest(t, cfg)
	stalled := func() string {
		for _, p := range second.Stats().Partitions {
			return p.Stalled
		}
		return ""
	}
	testenv.Eventually(t, 60*time.Second, func() bool { return stalled() != "" }, "did not stall on %s at assignment", stray)
	var statusTop string
	testenv.Eventually(t, 30*time.Second, func() bool {
		h, _ := e.rdb.HGetAll(ctx, wire.StatusKey(e.stream(0))).Result()
		statusTop = h["top"]
		return h["stalled"] != "" // written by the second ingest
	}, "no status hash of the stalled partition")
	t.Logf("stalled: %s; status hash top=%s", stalled(), statusTop)
	if statusTop != "99" {
		t.Errorf("status hash top %s: want 99, the highest record below the stray %s (committed 100)", statusTop, stray)
	}

	// The runbook: XDEL, then XSETID to the status hash's top.
	if err := e.rdb.XDel(ctx, e.stream(0), stray).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.Do(ctx, "XSETID", e.stream(0), statusTop+"-1").Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return stalled() == "" },
		"XSETID to the status top %s did not lift the stall (%s)", statusTop, stalled())
	end := testenv.LogEnd(t, e.brokers, e.topic, 1)
	testenv.Eventually(t, 60*time.Second, func() bool { return e.committed(t, 0) == end[0] },
		"commit did not reach the log end %v (committed %d, stalled %q)", end, e.committed(t, 0), stalled())
	lost, dups := l.check(end)
	t.Logf("runbook with the status top: committed %d (log end %d), lost=%d duplicates=%d", e.committed(t, 0), end[0], lost, dups)
	if lost != 0 {
		t.Errorf("LOSS: committed %d (log end %d), %d records never delivered", e.committed(t, 0), end[0], lost)
	}
}

// lifts reports whether stalled() becomes "" within d.
func lifts(stalled func() string, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if stalled() == "" {
			return true
		}
	}
	return false
}
