package worker

// Break-it review of the runs record (review-runs): dda6aa2 (a first delivery
// starts without start.lua and leaves no record) and the sched3 commits
// (6e5395f dead-letter on runs, d252466 hand-back to "handed-back", bb5f5ac
// LeaseLost vs Vanished). A failing test is a finding; a passing one held.

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// cleanRuns deletes the stream's runs hashes (of DefaultGroup, g1 and g2)
// when the test ends (env.stream does not).
func cleanRuns(t *testing.T, e *env, s string) {
	t.Cleanup(func() {
		for _, g := range []string{DefaultGroup, "g1", "g2"} {
			e.rdb.Del(context.Background(), wire.RunsKey(s, g), wire.RunsKey(wire.ReplayKey(s), g))
		}
	})
}

// TestRunsRecordIsPerGroup: two groups on one stream (fan-out, docs/wire.md
// "Groups") each get every record and each has its own retry budget. The
// runs hash is keyed by stream and entry ID only (<stream>:runs), so group
// g1's runs of an entry count against group g2's: with MaxDeliveries 2 and a
// handler that always fails, g2 must run the entry twice before it
// dead-letters it; it ran it once, then start.lua refused its retry with
// g1's record (2). Fixed: the record is per group, <stream>:runs:<group>
// (wire.RunsKey(stream, group)).
func TestRunsRecordIsPerGroup(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0, "g1", "g2")
	cleanRuns(t, e, s)
	e.add(t, s, 0, 1)
	ctx := context.Background()

	// g1: the first run fails, the retry (recorded by start.lua: 2) runs
	// until the test ends.
	release := make(chan struct{})
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	cfg1 := e.config(func(ctx context.Context, m *Message) error {
		if m.Deliveries == 1 {
			return errors.New("g1: first run fails")
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	cfg1.Group = "g1"
	cfg1.MaxDeliveries = 2
	running(t, mustNew(t, cfg1))
	testenv.Eventually(t, 10*time.Second, func() bool {
		v, _ := e.rdb.HGet(ctx, wire.RunsKey(s, "g1"), "0-1").Result()
		return v == "2"
	}, "g1's retry not recorded")

	// g2: always fails, MaxDeliveries 2: two runs, then the dead letter.
	var runs2 atomic.Int64
	cfg2 := e.config(func(context.Context, *Message) error { runs2.Add(1); return errors.New("g2: always fails") })
	cfg2.Group = "g2"
	cfg2.MaxDeliveries = 2
	running(t, mustNew(t, cfg2))
	testenv.Eventually(t, 10*time.Second, func() bool {
		dl, _ := e.rdb.XLen(ctx, wire.DLQKey(s)).Result()
		return runs2.Load() >= 1 && dl >= 1 && e.pending(t, s, "g2") == 0
	}, "g2's entry not dead-lettered")
	releaseOnce.Do(func() { close(release) })
	if runs2.Load() != 2 {
		t.Errorf("group g2 ran the entry %d times before dead-lettering it with MaxDeliveries 2, want 2: the runs record (%s) is shared with group g1", runs2.Load(), wire.RunsKey(s, "g2"))
	}
}

// TestRunsRecordDeletedWhenAnotherConsumerAcks: a worker reclaims an entry of
// a consumer whose lease lapsed (count 2: start.lua records run 1), its run
// fails; meanwhile the lapsed consumer finishes its own run and acknowledges
// the entry (XACK does not check the consumer). The retry finds the entry
// gone (start.lua: -1) and drops it. Nobody deleted the record: a field of
// the runs hash for an entry no longer pending, for ever. Fixed by the
// periodic runs clean-up (runsgc.lua, Config.RunsCleanupInterval).
func TestRunsRecordDeletedWhenAnotherConsumerAcks(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	cleanRuns(t, e, s)
	e.add(t, s, 0, 1)
	ctx := context.Background()
	if err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "lapsed", Streams: []string{s, ">"}, Count: 1}).Err(); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int64
	cfg := e.config(func(_ context.Context, m *Message) error {
		calls.Add(1)
		// The lapsed consumer's run ends now: it acknowledges.
		if err := e.rdb.XAck(ctx, s, DefaultGroup, m.ID).Err(); err != nil {
			t.Error(err)
		}
		return errors.New("fails: retried later")
	})
	cfg.RunsCleanupInterval = 50 * time.Millisecond
	w := mustNew(t, cfg)
	running(t, w)
	testenv.Eventually(t, 10*time.Second, func() bool { return calls.Load() >= 1 && e.pending(t, s, DefaultGroup) == 0 }, "not reclaimed and acknowledged")
	// Fixed: the worker's runs clean-up (runsgc.lua, every
	// RunsCleanupInterval) deletes the field of an entry no longer pending,
	// whoever acknowledged it.
	testenv.Eventually(t, 10*time.Second, func() bool {
		n, _ := e.rdb.HLen(ctx, wire.RunsKey(s, DefaultGroup)).Result()
		return n == 0
	}, "runs hash still holds a field after the entry was acknowledged: leaked for ever (nothing is pending)")
}

// TestRunsRecordDeletedWhenCountWorkerAcks: a group of kbridge worker and a
// worker that decides on delivery counts (rule 8 allows it: the Python and
// shell workers) — the kbridge worker fails an entry once (its retry is
// recorded: 2) and stops while it waits for the retry (the entry stays
// pending); the other worker reclaims it (reclaim.lua) and acknowledges it
// (XACK), as kbridge_worker.py does. Rule 8 does not ask that worker to
// delete the record; nobody did. Fixed by the periodic runs clean-up.
func TestRunsRecordDeletedWhenCountWorkerAcks(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	cleanRuns(t, e, s)
	e.add(t, s, 0, 1)
	ctx := context.Background()
	var calls atomic.Int64
	cfg := e.config(func(_ context.Context, m *Message) error {
		calls.Add(1)
		if m.Deliveries <= 2 {
			return errors.New("fails")
		}
		return nil
	})
	cfg.BackoffMin = 500 * time.Millisecond // the second retry waits 1s: stopped meanwhile
	cfg.BackoffMax = 10 * time.Second
	cfg.MaxDeliveries = 5
	w := mustNew(t, cfg)
	stop := running(t, w)
	testenv.Eventually(t, 10*time.Second, func() bool {
		v, _ := e.rdb.HGet(ctx, wire.RunsKey(s, DefaultGroup), "0-1").Result()
		return v == "2" && calls.Load() == 2
	}, "retry not recorded")
	if err := stop(); err != nil {
		t.Logf("Run: %v", err)
	}
	if e.pending(t, s, DefaultGroup) != 1 {
		t.Fatalf("entry not left pending by the stopped worker")
	}
	time.Sleep(cfg.VisibilityTimeout)
	res, err := reclaimScript.Run(ctx, e.rdb, []string{s}, DefaultGroup, "py", cfg.VisibilityTimeout.Milliseconds(), "0-0", 10).Slice()
	if err != nil {
		t.Fatal(err)
	}
	if _, entries, _, err := parseReclaim(res); err != nil || len(entries) != 1 {
		t.Fatalf("count worker's reclaim: %v entries, err %v", len(entries), err)
	}
	if err := e.rdb.XAck(ctx, s, DefaultGroup, "0-1").Err(); err != nil {
		t.Fatal(err)
	}
	// Fixed: the runs clean-up of any kbridge worker of the group
	// (runsgc.lua, every RunsCleanupInterval) deletes the field; the
	// delivery-count worker need not. The first worker stopped: another
	// one starts.
	cfg2 := e.config(func(context.Context, *Message) error { return nil })
	cfg2.RunsCleanupInterval = 50 * time.Millisecond
	running(t, mustNew(t, cfg2))
	testenv.Eventually(t, 10*time.Second, func() bool {
		n, _ := e.rdb.HLen(ctx, wire.RunsKey(s, DefaultGroup)).Result()
		return n == 0
	}, "runs hash still holds a field after a delivery-count worker acknowledged the entry: leaked for ever (a worker written from docs/wire.md alone never deletes it)")
}

// TestStaleRunsRecordNotCountedOnFirstRetry: a runs field left behind for an
// ID (TestRunsRecordDeletedWhen*: nothing deletes it) meets a new entry with
// that ID: the runbook of a recreated topic (docs/operations.md) deletes the
// stream only, and the new topic's offsets start at 0 again (IDs 0-1, ...).
// Before dda6aa2 the first run went through start.lua, which counted a
// record above count - 1 as stale and overwrote it; now the first run skips
// the script and the first retry (ARGV[5] = 1: no stale check) takes the old
// value: an entry that failed once, with MaxDeliveries 3, is dead-lettered
// unrun instead of retried.
func TestStaleRunsRecordNotCountedOnFirstRetry(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	cleanRuns(t, e, s)
	ctx := context.Background()
	// The old topic's entry 0-1 left a record of 5 runs; its stream is
	// deleted (the runbook), then created again by the ingest.
	if err := e.rdb.HSet(ctx, wire.RunsKey(s, DefaultGroup), "0-1", 5).Err(); err != nil {
		t.Fatal(err)
	}
	e.rdb.Del(ctx, s)
	s = e.stream(t, "t", 0)
	e.add(t, s, 0, 1)
	var runs atomic.Int64
	cfg := e.config(func(_ context.Context, m *Message) error {
		if runs.Add(1) == 1 {
			return errors.New("first run fails")
		}
		return nil
	})
	cfg.MaxDeliveries = 3
	w := mustNew(t, cfg)
	running(t, w)
	testenv.Eventually(t, 10*time.Second, func() bool { return runs.Load() >= 1 && e.pending(t, s, DefaultGroup) == 0 }, "entry not settled")
	dl, _ := e.rdb.XLen(ctx, wire.DLQKey(s)).Result()
	if runs.Load() != 2 || dl != 0 {
		t.Errorf("new entry 0-1, failing once, MaxDeliveries 3: ran %d times, %d dead letters; want 2 runs, none (the old entry's record taken for its runs)", runs.Load(), dl)
	}
}

// TestDeletedHeldEntryCountsVanished: an entry deleted from the stream while
// the worker holds it (XDEL; Redis 7's XCLAIM in lease.lua then drops it from
// the pending list) was taken by nobody: Stats.Vanished ("held entries no
// longer pending anywhere that nobody took: ... or they were deleted"), not
// LeaseLost. classifyLost calls every held entry not pending whose ID is at
// or below the group's last-delivered-id "reclaimed and acknowledged by
// another consumer", and every entry this consumer read is.
func TestDeletedHeldEntryCountsVanished(t *testing.T) {
	e := newEnv(t)
	if e.mini {
		t.Skip("needs Redis 7's XCLAIM of a deleted entry (REDIS_ADDR)")
	}
	s := e.stream(t, "t", 0)
	cleanRuns(t, e, s)
	e.add(t, s, 0, 1)
	ctx := context.Background()
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(release) })
	cfg := e.config(func(ctx context.Context, m *Message) error {
		select {
		case started <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	w := mustNew(t, cfg)
	running(t, w)
	<-started
	if err := e.rdb.XDel(ctx, s, "0-1").Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { st := w.Stats(); return st.LeaseLost+st.Vanished > 0 }, "deleted held entry never noticed")
	once.Do(func() { close(release) })
	if st := w.Stats(); st.LeaseLost != 0 || st.Vanished != 1 {
		t.Errorf("held entry deleted from the stream: LeaseLost %d, Vanished %d; want 0 and 1 (nobody took it)", st.LeaseLost, st.Vanished)
	}
}

// TestQueuedFirstDeliveryTakenIsNotRun: an entry read ahead (count 1) waits
// in the local queue; another consumer takes it meanwhile (its lease lapsed
// while Redis was unreachable; here an XCLAIM). Before dda6aa2 start.lua
// checked ownership before the handler ("the script still asks Redis whether
// the entry is ours") and it was not run; the first-delivery fast path
// checked only the local hold, which the next lease round (V/3) would drop.
// Fixed: the fast path is taken only within V/2 of the read (heldEntry.since).
func TestQueuedFirstDeliveryTakenIsNotRun(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	cleanRuns(t, e, s)
	e.add(t, s, 0, 2)
	ctx := context.Background()
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	var ran1 atomic.Int64
	cfg := e.config(func(ctx context.Context, m *Message) error {
		if m.Offset == 0 {
			started <- struct{}{}
			<-release
			return nil
		}
		ran1.Add(1)
		return nil
	})
	cfg.Concurrency = 1
	cfg.VisibilityTimeout = 6 * time.Second // lease rounds every 2s
	w := mustNew(t, cfg)
	running(t, w)
	<-started
	testenv.Eventually(t, 5*time.Second, func() bool { return e.pending(t, s, DefaultGroup) == 2 }, "entry 1 not read ahead")
	// Adjusted to the documented guarantee: within V/2 of its delivery no
	// worker following the rules can take an entry (it takes idle V), and
	// the first delivery starts without the check; an entry queued longer
	// goes through start.lua. So the entry waits here longer than V/2
	// (3s) before it is taken; the handler of entry 0 is released right
	// after, well before the next lease round could notice (every 2s).
	time.Sleep(cfg.VisibilityTimeout/2 + 500*time.Millisecond)
	if err := e.rdb.XClaim(ctx, &redis.XClaimArgs{Stream: s, Group: DefaultGroup, Consumer: "other", Messages: []string{"1-1"}}).Err(); err != nil {
		t.Fatal(err)
	}
	close(release)
	time.Sleep(500 * time.Millisecond)
	if ran1.Load() != 0 {
		t.Errorf("entry 1-1, taken by consumer 'other' while queued here, was run here too (%d times)", ran1.Load())
	}
}

// TestMixedGroupRunsBound: docs/wire.md rule 8 lets a worker that does not
// read ahead decide on delivery counts (kbridge_worker.py, the shell worker)
// and promises that a record whose handler crashes its worker "runs at most
// max + 1 times". Such a worker records no runs: in a group it shares with
// kbridge worker, its runs are invisible to start.lua. Here the Python worker
// ran the entry (count 1), failed, retried it in process with redeliver.lua
// (count 2) and died while running it: 2 runs. kbridge worker, MaxDeliveries
// 2, reclaims it (count 3, no record) and runs it twice more: 4 runs, above
// MaxDeliveries + 1 = 3. Resolved in the docs: in a mixed group the bound is
// 2 × max (rule 8), which this test now checks.
func TestMixedGroupRunsBound(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	cleanRuns(t, e, s)
	e.add(t, s, 0, 1)
	ctx := context.Background()
	if err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "py", Streams: []string{s, ">"}, Count: 1}).Err(); err != nil {
		t.Fatal(err)
	}
	redeliver := redis.NewScript(mustScript("redeliver.lua"))
	if n, err := redeliver.Run(ctx, e.rdb, []string{s}, DefaultGroup, "py", "0-1").Int64(); err != nil || n != 2 {
		t.Fatalf("redeliver.lua: %d, %v", n, err)
	}
	const pyRuns = 2
	var runs atomic.Int64
	cfg := e.config(func(context.Context, *Message) error { runs.Add(1); return errors.New("always fails") })
	cfg.MaxDeliveries = 2
	running(t, mustNew(t, cfg))
	testenv.Eventually(t, 15*time.Second, func() bool { return e.pending(t, s, DefaultGroup) == 0 }, "entry still pending")
	// Resolved by documenting the bound that holds in a mixed group
	// (docs/wire.md rule 8, Config.MaxDeliveries): each kind of worker runs
	// a record at most max times (the delivery-count worker only deliveries
	// with count <= max, kbridge worker max recorded runs, its unrecorded
	// first run taking count 1 from the other), 2 × max in all; max + 1
	// holds in a group of kbridge workers only.
	if runs.Load() > int64(cfg.MaxDeliveries) {
		t.Errorf("kbridge worker ran the record %d times, above MaxDeliveries = %d", runs.Load(), cfg.MaxDeliveries)
	}
	if total := pyRuns + runs.Load(); total > 2*int64(cfg.MaxDeliveries) {
		t.Errorf("the record ran %d times (%d by the delivery-count worker, %d by kbridge worker), above 2 × MaxDeliveries = %d (docs/wire.md rule 8, mixed group)",
			total, pyRuns, runs.Load(), 2*cfg.MaxDeliveries)
	}
}

// TestFirstDeliveryBackOffThenFailuresKeepBudget (held): a first delivery
// (no record) that asks to back off (RetryError: counts no run), then fails
// for ever, with MaxDeliveries 3: the back-off run is not counted, the
// unrecorded first run is (ARGV[7]): 4 handler calls, 1 dead letter, no
// record left.
func TestFirstDeliveryBackOffThenFailuresKeepBudget(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	cleanRuns(t, e, s)
	e.add(t, s, 0, 1)
	ctx := context.Background()
	var calls atomic.Int64
	cfg := e.config(func(context.Context, *Message) error {
		if calls.Add(1) == 1 {
			return &RetryError{After: 20 * time.Millisecond, Err: errors.New("downstream busy")}
		}
		return errors.New("fails")
	})
	cfg.MaxDeliveries = 3
	running(t, mustNew(t, cfg))
	testenv.Eventually(t, 10*time.Second, func() bool {
		dl, _ := e.rdb.XLen(ctx, wire.DLQKey(s)).Result()
		return dl == 1 && e.pending(t, s, DefaultGroup) == 0
	}, "not dead-lettered")
	left, _ := e.rdb.HLen(ctx, wire.RunsKey(s, DefaultGroup)).Result()
	if calls.Load() != 4 || left != 0 {
		t.Errorf("handler calls %d (want 4: a back-off, then 3 counted runs), runs records left %d (want 0)", calls.Load(), left)
	}
}

// TestRepeatedHandBackNotDeadLettered (held): entries read ahead and handed
// back (unclaim.lua) by three workers in turn, never run, are not
// dead-lettered by a kbridge worker with MaxDeliveries 1: each hand-back
// takes its delivery off the count, and none left a record.
func TestRepeatedHandBackNotDeadLettered(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	cleanRuns(t, e, s)
	const n = 5
	e.add(t, s, 0, n)
	ctx := context.Background()
	ids := []any{}
	for o := range n {
		ids = append(ids, wire.EntryID(int64(o)))
	}
	if err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "c0", Streams: []string{s, ">"}, Count: n}).Err(); err != nil {
		t.Fatal(err)
	}
	for i, c := range []string{"c0", "c1", "c2"} {
		if i > 0 {
			if err := e.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{Stream: s, Group: DefaultGroup, Consumer: c, MinIdle: 0, Start: "0-0", Count: n}).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if err := unclaimScript.Run(ctx, e.rdb, []string{s}, append([]any{DefaultGroup, c, 600}, ids...)...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	got := newSeen()
	cfg := e.config(func(_ context.Context, m *Message) error { got.add(m); return nil })
	cfg.MaxDeliveries = 1
	running(t, mustNew(t, cfg))
	testenv.Eventually(t, 10*time.Second, func() bool { return got.distinct() == n && e.pending(t, s, DefaultGroup) == 0 }, "handled %d of %d", got.distinct(), n)
	if dl, _ := e.rdb.XLen(ctx, wire.DLQKey(s)).Result(); dl != 0 {
		t.Errorf("%d entries handed back unrun were dead-lettered", dl)
	}
}
