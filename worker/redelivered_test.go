package worker

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestReadAgainWhileRunningRunsOnce: the group's delivery position goes back
// (XGROUP SETID, what a Redis restored from an older snapshot does) while
// this worker runs an entry's handler. Its next XREADGROUP delivers the entry
// again; the worker must not start a second handler for an entry it is
// running (docs/reliability.md finding 3: it did, within a millisecond).
// Real Redis only: miniredis has no XGROUP SETID.
func TestReadAgainWhileRunningRunsOnce(t *testing.T) {
	e := newEnv(t)
	if e.mini {
		t.Skip("miniredis has no XGROUP SETID: set REDIS_ADDR")
	}
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 3)
	ctx := context.Background()
	started, release := make(chan struct{}), make(chan struct{})
	var (
		mu    sync.Mutex
		calls = map[int64]int{}
	)
	cfg := e.config(func(hctx context.Context, m *Message) error {
		mu.Lock()
		calls[m.Offset]++
		n := calls[m.Offset]
		mu.Unlock()
		if m.Offset == 0 && n == 1 {
			close(started)
			select {
			case <-release:
			case <-hctx.Done():
				return hctx.Err()
			}
		}
		return nil
	})
	w := mustNew(t, cfg)
	stop := running(t, w)
	defer stop()
	<-started
	// Offsets 1 and 2 are handled and acknowledged, 0 runs; the position
	// goes back to 0. (One pending entry alone does not say 1 and 2 were
	// read: the first read may be a probe, COUNT 1, that delivered 0 only;
	// the position going back then, 1 and 2 were read once, after it, and
	// the test waited for their second run in vain: 1 CI run in ~50.)
	testenv.Eventually(t, 15*time.Second, func() bool {
		mu.Lock()
		ran := calls[1] == 1 && calls[2] == 1
		mu.Unlock()
		return ran && e.pending(t, s, DefaultGroup) == 1
	}, "offsets 1 and 2 not handled and acknowledged")
	if err := e.rdb.Do(ctx, "XGROUP", "SETID", s, DefaultGroup, "0").Err(); err != nil {
		t.Fatal(err)
	}
	// The worker reads entries 0, 1 and 2 again (XREADGROUP delivers 0 first:
	// Redis moves its PEL entry to the reader and sets its count back to 1).
	// Once 1 and 2 ran again, the read that delivered 0 was admitted.
	testenv.Eventually(t, 15*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return calls[1] == 2 && calls[2] == 2
	}, "entries 1 and 2 not read and handled again after XGROUP SETID")
	close(release)
	testenv.Eventually(t, 15*time.Second, func() bool { return e.pending(t, s, DefaultGroup) == 0 }, "entry 0 not acknowledged")
	mu.Lock()
	defer mu.Unlock()
	t.Logf("handler calls per offset after the position went back: %v", calls)
	if calls[0] != 1 {
		t.Errorf("entry 0 was handled %d times while one run of it was going on, want 1", calls[0])
	}
}
