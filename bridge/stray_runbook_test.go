package bridge_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// TestBreakStrayRunbookNoRestart (review of issue 7 point 7): the runbook of
// docs/operations.md ("A stalled partition") applied while the SAME ingest
// keeps running — no restart in between, unlike TestStrayEntryStalls. A
// worker was delivered (and acked) the stray entry, so group "workers" has
// last-delivered-id = the stray ID. XDEL + XSETID back to the ingest's own
// top makes the top equal to what the ingest appended: observe sees neither
// a loss nor a top ahead, checkStray just unstalls — and nothing sets the
// group back (rewindGroupsScript only runs in ensure: at assignment, after a
// loss, when a group is missing). The records appended next have IDs below
// the group's last-delivered-id: XREADGROUP > never delivers them, the
// group's frontier is top+1, and the commit passes them. Lost records.
func TestBreakStrayRunbookNoRestart(t *testing.T) {
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

	// New records after the runbook.
	testenv.Produce(t, e.brokers, e.topic, 100, 50)
	end2 := testenv.LogEnd(t, e.brokers, e.topic, 1)
	testenv.Eventually(t, 60*time.Second, func() bool { return e.committed(t, 0) == end2[0] },
		"commit did not reach the log end %v (committed %d)", end2, e.committed(t, 0))
	gs, _ := e.rdb.XInfoGroups(ctx, e.stream(0)).Result()
	lost, _ := l.check(end2)
	if lost != 0 {
		t.Errorf("LOSS: committed %d (log end %d) but the worker never got %d records appended after the runbook; group state %+v",
			e.committed(t, 0), end2[0], lost, gs)
	}
}

// TestBreakStrayDeletedNotReset (review of issue 7 point 7): the operator
// deletes the stray entry (XDEL) but does not set the stream's top back —
// step 2 of the runbook half done, or a tool that XADDs and XDELs. The
// last-generated-id stays at the stray ID; its entry is gone, so "ours"
// answers -1 (cannot tell) and, below the log end, neither checkStray nor
// the append script treat it as foreign: the stall lifts, and the append
// script skips every record up to the stray offset as "already there".
// They are never in the stream, never delivered, and the commit passes
// them.
func TestBreakStrayDeletedNotReset(t *testing.T) {
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
	// Safe outcomes: the partition stays stalled (committing nothing past
	// what it appended), or it resumes and loses nothing.
	l := e.startWork(t, 0)
	if !lifts(stalled, 5*time.Second) {
		time.Sleep(3 * cfg.CommitInterval)
		if c := e.committed(t, 0); c > 20 {
			t.Errorf("still stalled but committed %d, past the 20 records appended", c)
		}
		t.Logf("XDEL without XSETID: the partition stays stalled (%s)", stalled())
		return
	}
	end := testenv.LogEnd(t, e.brokers, e.topic, 1)
	testenv.Eventually(t, 60*time.Second, func() bool { return e.committed(t, 0) == end[0] },
		"commit did not reach the log end %v (committed %d)", end, e.committed(t, 0))
	lost, _ := l.check(end)
	if lost != 0 {
		t.Errorf("LOSS: committed %d (log end %d), %d records never delivered (stream %v ...)",
			e.committed(t, 0), end[0], lost, e.streamOffsets(t, 0)[:5])
	}
}

// TestBreakStrayRunbookStatusTop (review of issue 7 point 7): the stray entry
// is found at assignment (a restart after it was written), below the log
// end. NewPartition takes the stream's top as what this ingest "appended",
// so the status hash's top field — which the runbook tells the operator to
// XSETID back to — is the stray's own offset. Following the runbook
// literally (XDEL the stray, XSETID to the status top) leaves the top where
// it was with its entry gone: "cannot tell" is not foreign, the stall lifts,
// and the ingest fetches from top+1: every record between the commit and
// the stray offset is never appended, and the commit passes them.
func TestBreakStrayRunbookStatusTop(t *testing.T) {
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

	// The runbook: XDEL, then XSETID to the status hash's top.
	if err := e.rdb.XDel(ctx, e.stream(0), stray).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.Do(ctx, "XSETID", e.stream(0), statusTop+"-1").Err(); err != nil {
		t.Fatal(err)
	}
	if !lifts(stalled, 5*time.Second) {
		// Safe: the top is still the stray's offset; nothing committed.
		if c := e.committed(t, 0); c != 100 {
			t.Errorf("still stalled but committed %d, want 100", c)
		}
		t.Logf("XSETID to the status top %s: the partition stays stalled (%s) — safe, but the runbook's pointer to the status top is wrong", statusTop, stalled())
		return
	}
	end := testenv.LogEnd(t, e.brokers, e.topic, 1)
	testenv.Eventually(t, 60*time.Second, func() bool { return e.committed(t, 0) == end[0] },
		"commit did not reach the log end %v (committed %d, stalled %q)", end, e.committed(t, 0), stalled())
	lost, _ := l.check(end)
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
