package worker

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

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
