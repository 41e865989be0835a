package worker

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

func TestSlotGroups(t *testing.T) {
	a, b, c := wire.StreamKey("p", "t", 0), wire.StreamKey("p", "t", 1), wire.StreamKey("p", "u", 0)
	got := slotGroups([]string{b, a, wire.ReplayKey(b), c, wire.ReplayKey(a)})
	want := [][]string{{b, wire.ReplayKey(b)}, {a, wire.ReplayKey(a)}, {c}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("slotGroups = %q, want %q", got, want)
	}
}

// forcePerSlot makes w read the way it does on a Redis Cluster (one
// XREADGROUP per hash slot) on a single Redis, where that works too.
func forcePerSlot(w *Worker, maxBlocking int) {
	w.perSlot, w.slotReads = true, newSlotReads(maxBlocking)
}

// TestPerSlotReads runs the cluster read path on the stand-in: every entry
// of 6 streams (each its own slot) is handled once, with few handler slots
// (windows) and with many (a share of each stream per read); a quiet
// partition is not held back by a busy one; and once everything is idle, a
// new entry on any stream wakes the worker long before BlockTimeout.
func TestPerSlotReads(t *testing.T) {
	for _, conc := range []int{4, 32} {
		t.Run("concurrency="+itoa(int64(conc)), func(t *testing.T) {
			e := newEnv(t)
			var streams []string
			for p := range 6 {
				streams = append(streams, e.stream(t, "t", p))
			}
			busy, quiet := streams[0], streams[5]
			e.add(t, busy, 0, 2000)
			for _, s := range streams[1:] {
				e.add(t, s, 0, 5)
			}
			var mu sync.Mutex
			var order []string
			got := newSeen()
			cfg := e.config(func(ctx context.Context, m *Message) error {
				mu.Lock()
				order = append(order, m.Stream)
				mu.Unlock()
				got.add(m)
				return nil
			})
			cfg.Concurrency = conc
			cfg.VisibilityTimeout = 9 * time.Second
			cfg.BlockTimeout = 3 * time.Second
			w := mustNew(t, cfg)
			forcePerSlot(w, 8)
			running(t, w)
			testenv.Eventually(t, 20*time.Second, func() bool { return got.distinct() == 2025 }, "handled %d of 2025", got.distinct())
			mu.Lock()
			n, last := 0, 0
			for i, s := range order {
				if s == quiet {
					if n++; n == 5 {
						last = i
						break
					}
				}
			}
			mu.Unlock()
			if last >= 200 {
				t.Errorf("the quiet partition's 5th entry was handled as number %d; want within the first 200", last+1)
			}
			// Idle now: every slot group has a blocking read waiting.
			time.Sleep(300 * time.Millisecond)
			for i, s := range []string{streams[3], streams[1], busy} {
				start := time.Now()
				want := got.distinct() + 1
				e.add(t, s, 2000+i, 1)
				testenv.Eventually(t, 2*time.Second, func() bool { return got.distinct() == want }, "new entry on %s not handled", s)
				if d := time.Since(start); d > time.Second {
					t.Errorf("new entry on %s handled after %v; want well before BlockTimeout %v", s, d, cfg.BlockTimeout)
				}
			}
			if got.total() != got.distinct() {
				t.Errorf("handled %d times for %d entries: duplicates", got.total(), got.distinct())
			}
			for _, s := range streams {
				testenv.Eventually(t, 5*time.Second, func() bool { return e.pending(t, s, DefaultGroup) == 0 }, "%s has pending entries", s)
			}
		})
	}
}

// TestPerSlotProbeFailureKeepsWhatItRead: on a Redis Cluster a probe is
// rounds of XREADGROUPs, one per hash slot group; when a later round fails
// (CLUSTERDOWN on one node during a failover), the entries the earlier
// rounds delivered are pending under this consumer and held (leased), so
// they must come back to the reader, to be queued and run. Found by
// TestClusterFailover (internal/e2e): they were dropped with the error,
// their leases extended for ever by a worker that would never run them,
// and the Kafka commits of their partitions — on masters that stayed up —
// stalled for good.
func TestPerSlotProbeFailureKeepsWhatItRead(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a := e.stream(t, "t", 0)
	e.add(t, a, 0, 1)
	// b and its replay stream share a slot, so they are one round of two
	// keys; with a budget of 2 the probe reads a in a round of its own
	// first. b has no group: its XREADGROUP fails (NOGROUP), as a round on
	// a node that is down would.
	b := wire.StreamKey(e.prefix, "u", 0)
	if err := e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: b, ID: "1-1", Values: []any{"f", "v"}}).Err(); err != nil {
		t.Fatal(err)
	}
	w := mustNew(t, e.config(func(context.Context, *Message) error { return nil }))
	forcePerSlot(w, 8)
	var started []*task
	w.sched.start = func(t *task) { started = append(started, t) } // what Run would hand to a handler
	read, probed, err := w.probe(ctx, []string{a, b, wire.ReplayKey(b)}, 2)
	if err == nil {
		t.Fatalf("the probe of a stream without the group did not fail: the test does not reach a failed round")
	}
	w.mu.Lock()
	held := len(w.held)
	w.mu.Unlock()
	if held != 1 {
		t.Fatalf("%d entries held after the probe, want 1 (a's entry, delivered by the first round)", held)
	}
	queued, _, _, _ := w.sched.counts()
	if read != 1 || probed != 1 || queued+len(started) != 1 {
		t.Fatalf("the probe read %d entries of %d keys (%v), queued %d, started %d; want a's entry, held, queued or started",
			read, probed, err, queued, len(started))
	}
	if len(started) == 1 && (started[0].m.Stream != a || started[0].m.ID != wire.EntryID(0)) {
		t.Fatalf("started %s %s, want %s %s", started[0].m.Stream, started[0].m.ID, a, wire.EntryID(0))
	}
}
