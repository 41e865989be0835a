package bridge_test

import (
	"context"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestHandOverThenRedisRestartedEmpty (issue 7 point 0): an ingest takes over
// partitions whose streams still hold entries no worker acknowledged, then
// Redis restarts empty. The new owner must fetch again from the committed
// offset — max(committed, top+1) with the top read after the loss — not from
// the stream top it read at assignment: the entries between the commit and
// that top only lived in Redis (invariant 5). Zero lost.
func TestHandOverThenRedisRestartedEmpty(t *testing.T) {
	const n = 2000
	srv := testenv.StartRedisServer(t, "none")
	e := newEnv(t, 2)
	e.useRedis(t, srv.Addr())
	testenv.Produce(t, e.brokers, e.topic, 0, n)
	cfg := e.config(t)
	a := startIngest(t, cfg)
	end := testenv.LogEnd(t, e.brokers, e.topic, e.partitions)

	// A worker processes part of the records, then stops. 2 ms a record
	// (~1,000/s over both partitions): with none, it read 100 at a time
	// and handled all 2,000 between two polls of the check below, and the
	// test found nothing left to test (1 CI run under -race).
	l := newLedger()
	wctx, wcancel := context.WithCancel(context.Background())
	wg := e.work(wctx, t, l, 2*time.Millisecond)
	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() >= n/4 }, "processed %d", l.total())
	wcancel()
	wg.Wait()
	// Every record is in the streams; the commit sits at what was processed.
	testenv.Eventually(t, 60*time.Second, func() bool {
		st := a.Stats()
		if len(st.Partitions) != e.partitions {
			return false
		}
		for _, p := range st.Partitions {
			if p.Top != end[p.Partition]-1 || p.Committed != p.LogEnd-p.Backlog {
				return false
			}
		}
		return true
	}, "streams not complete or commits not caught up: %+v", a.Stats().Partitions)
	a.stop(t)
	before := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
	onlyInRedis := int64(0)
	for p, off := range before {
		onlyInRedis += end[p] - off
	}
	if onlyInRedis == 0 {
		t.Fatalf("nothing left unprocessed in Redis (committed %v, log end %v): the test would test nothing", before, end)
	}

	// The hand-over: a new ingest reads the commits and the streams' tops.
	b := startIngest(t, cfg)
	testenv.Eventually(t, 60*time.Second, func() bool {
		st := b.Stats()
		if len(st.Partitions) != e.partitions {
			return false
		}
		for _, p := range st.Partitions {
			if p.Top != end[p.Partition]-1 {
				return false
			}
		}
		return true
	}, "the new owner did not take over: %+v", b.Stats().Partitions)
	// Redis restarts empty.
	srv.Stop(t)
	srv.Start(t)
	testenv.Eventually(t, 60*time.Second, func() bool { return b.Stats().Losses >= int64(e.partitions) },
		"the new owner did not notice the loss: losses=%d", b.Stats().Losses)

	l2 := e.startWork(t, 0)
	testenv.Eventually(t, 90*time.Second, func() bool { return l.total()+l2.total() >= n && l2.total() >= int(onlyInRedis) },
		"processed %d before and %d after the loss, want every record: %d were only in Redis", l.total(), l2.total(), onlyInRedis)
	testenv.Eventually(t, 30*time.Second, func() bool {
		c := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
		return sameOffsets(c, end)
	}, "commits did not reach the log end %v", end)
	lost := 0
	for p, last := range end {
		for off := int64(0); off < last; off++ {
			if l.seen[p][off] == 0 && l2.seen[p][off] == 0 {
				lost++
			}
		}
	}
	if lost != 0 {
		t.Errorf("lost %d records", lost)
	}
	t.Logf("hand-over then Redis restarted empty: %d records, committed at the hand-over %v, %d only in Redis; after the loss the new owner fetched again: %d processed, lost=%d, losses seen=%d",
		n, before, onlyInRedis, l2.total(), lost, b.Stats().Losses)
}
