package bridge_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
)

// lengthWatch samples XLEN of every stream of e until stopped, keeping the
// largest per partition.
type lengthWatch struct {
	mu   sync.Mutex
	max  map[int]int64
	stop chan struct{}
	done chan struct{}
}

func (e *env) watchLengths() *lengthWatch {
	w := &lengthWatch{max: map[int]int64{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
			for p := 0; p < e.partitions; p++ {
				n, err := e.rdb.XLen(context.Background(), e.stream(p)).Result()
				if err == nil {
					w.mu.Lock()
					w.max[p] = max(w.max[p], n)
					w.mu.Unlock()
				}
			}
		}
	}()
	return w
}

func (w *lengthWatch) finish() map[int]int64 {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.max
}

var errRefused = errors.New("[16] Not Coordinator For Group (injected)")

// TestCommitOutageStreamBounded (issue 7 point 5): every Kafka commit fails
// for 30s while records keep coming and the workers acknowledge them. The
// streams are not trimmed (nothing is committed), so the ingest must pause
// on their length: XLEN stays at most 2 × the cap. Once commits succeed
// again, everything is committed, trimmed and nothing is lost. On main XLEN
// grew with every record fetched (the issue: 3,000 with a cap of 200).
func TestCommitOutageStreamBounded(t *testing.T) {
	const capacity = 200
	e := newEnv(t, 2)
	cfg := e.config(t)
	cfg.PartitionCap = capacity
	var failing atomic.Bool
	failing.Store(true)
	in, err := bridge.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	bridge.InjectCommitFault(in, func(string, int) error {
		if failing.Load() {
			return errRefused
		}
		return nil
	})
	r := runIngest(t, in)
	l := e.startWork(t, 0)
	w := e.watchLengths()
	began := time.Now()
	produced := 0
	for time.Since(began) < 30*time.Second {
		testenv.Produce(t, e.brokers, e.topic, produced, 100)
		produced += 100
		time.Sleep(200 * time.Millisecond)
	}
	during := w.finish()
	st := r.Stats()
	t.Logf("every commit failing for 30s: %d records produced, %d processed, %d commit errors, %d pauses; max XLEN per partition %v (cap %d)",
		produced, l.total(), st.CommitErrors, st.Pauses, during, capacity)
	for p, n := range during {
		if n > 2*capacity {
			t.Errorf("partition %d: XLEN reached %d while commits failed, want at most 2 × cap = %d", p, n, 2*capacity)
		}
	}
	if st.CommitErrors == 0 {
		t.Fatalf("no commit failed: the fault was not injected")
	}
	failing.Store(false)
	lost, dups := e.waitDone(t, l, 2*time.Minute)
	testenv.Eventually(t, 30*time.Second, func() bool {
		for p := 0; p < e.partitions; p++ {
			if n, _ := e.rdb.XLen(context.Background(), e.stream(p)).Result(); n > 0 {
				return false
			}
		}
		return true
	}, "the streams were not trimmed once commits succeeded")
	t.Logf("commits back: lost=%d duplicates=%d, streams trimmed to 0", lost, dups)
}

// TestCommitOnePartitionRefused (issue 7 point 5): Kafka refuses the commit
// of one partition (as for a deleted topic or a revoked ACL); the others are
// committed and trimmed all the same, and the refused one's stream stays
// bounded. On main kafka-go's CommitOffsets failed the whole request on the
// first partition's error: no partition counted as committed, none was
// trimmed.
func TestCommitOnePartitionRefused(t *testing.T) {
	const capacity = 200
	e := newEnv(t, 3)
	cfg := e.config(t)
	cfg.PartitionCap = capacity
	var refuse atomic.Bool
	refuse.Store(true)
	in, err := bridge.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	bridge.InjectCommitFault(in, func(_ string, p int) error {
		if p == 0 && refuse.Load() {
			return errRefused
		}
		return nil
	})
	runIngest(t, in)
	l := e.startWork(t, 0)
	w := e.watchLengths()
	testenv.Produce(t, e.brokers, e.topic, 0, 3000)
	end := testenv.LogEnd(t, e.brokers, e.topic, 3)
	testenv.Eventually(t, time.Minute, func() bool {
		c := testenv.Committed(t, e.brokers, e.group, e.topic, 3)
		return c[1] == end[1] && c[2] == end[2]
	}, "partitions 1 and 2 were not committed to their log ends %v while partition 0's commit was refused: %v",
		end, testenv.Committed(t, e.brokers, e.group, e.topic, 3))
	testenv.Eventually(t, 30*time.Second, func() bool {
		n1, _ := e.rdb.XLen(context.Background(), e.stream(1)).Result()
		n2, _ := e.rdb.XLen(context.Background(), e.stream(2)).Result()
		return n1 == 0 && n2 == 0
	}, "partitions 1 and 2 were not trimmed")
	c0 := testenv.Committed(t, e.brokers, e.group, e.topic, 3)[0]
	max0 := w.finish()[0]
	t.Logf("partition 0 refused: committed %d of %d, max XLEN %d (cap %d); partitions 1 and 2 committed to %d and %d and trimmed",
		c0, end[0], max0, capacity, end[1], end[2])
	if max0 > 2*capacity {
		t.Errorf("partition 0's XLEN reached %d, want at most %d", max0, 2*capacity)
	}
	refuse.Store(false)
	e.waitDone(t, l, time.Minute)
}

// runIngest runs an Ingest made with bridge.New (to inject faults first),
// stopped when the test ends.
func runIngest(t *testing.T, in *bridge.Ingest) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Ingest: in, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- in.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}
