package bridge_test

import (
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestFetchReviewRedisEmptyWhilePipelined (invariant 5, issue 10 build 1):
// small fetches (--fetch-max-bytes 1 KiB: a result of a few records, the
// next one fetched while it is appended), small appends, a small cap (so
// partitions pause and resume), and Redis crashing and coming back empty
// three times under load — each time results are in flight or buffered
// for a top that no longer exists. A result fetched ahead must never be
// appended over the lost top: 0 lost, commits never go back, every commit
// reaches the log end.
func TestFetchReviewRedisEmptyWhilePipelined(t *testing.T) {
	const n = 12_000
	srv := testenv.StartRedisServer(t, "none")
	e := newEnv(t, 4)
	e.useRedis(t, srv.Addr())
	testenv.Produce(t, e.brokers, e.topic, 0, n)
	cfg := e.config(t)
	cfg.FetchMaxBytes = 1024
	cfg.AppendBatch = 5
	cfg.PartitionCap = 200
	cfg.LowWatermark = 50
	in := startIngest(t, cfg)
	l := e.startWork(t, 100*time.Microsecond)
	watch := e.watchCommits(t)
	for i, at := range []int{n / 5, 2 * n / 5, 3 * n / 5} {
		testenv.Eventually(t, 90*time.Second, func() bool { return l.total() >= at }, "processed %v of %d", later(func() any { return l.total() }), at)
		srv.Crash(t)
		srv.Start(t)
		t.Logf("crash %d: redis restarted empty after %d records processed", i+1, l.total())
	}
	lost, dups := e.waitDone(t, l, 3*time.Minute)
	watch.finish(t)
	st := in.Stats()
	t.Logf("%s: %d records, 3 empty Redis restarts under pipelined 1 KiB fetches: lost=%d duplicates=%d, losses seen %d, pauses %d, duplicates skipped by the append script %d",
		testenv.String(), n, lost, dups, st.Losses, st.Pauses, st.DuplicatesSkipped)
	if st.Losses == 0 {
		t.Errorf("no loss noticed: the test did not test the recovery")
	}
}

// TestFetchReviewPauseAndRevokeMidFetch (invariants 1, 7; issue 10 build
// 1): partitions pause and resume hundreds of times (cap 60, low watermark
// 10, 1 KiB fetches so a result is fetched ahead at every pause), and a
// second ingest joins and leaves twice (each partition revoked while its
// fetch is in flight). No record may be skipped or appended twice: every
// stream holds a gap-free run of offsets, nothing is lost or processed
// twice, commits reach the log ends.
func TestFetchReviewPauseAndRevokeMidFetch(t *testing.T) {
	const n = 8_000
	e := newEnv(t, 4)
	testenv.Produce(t, e.brokers, e.topic, 0, n)
	cfg := e.config(t)
	cfg.FetchMaxBytes = 1024
	cfg.AppendBatch = 7
	cfg.PartitionCap = 60
	cfg.LowWatermark = 10
	in := startIngest(t, cfg)
	l := e.startWork(t, 200*time.Microsecond)
	watch := e.watchCommits(t)
	for i, at := range []int{n / 4, n / 2} {
		testenv.Eventually(t, 2*time.Minute, func() bool { return l.total() >= at }, "processed %v of %d", later(func() any { return l.total() }), at)
		second := startIngest(t, cfg)
		testenv.Eventually(t, 60*time.Second, func() bool { return len(second.Stats().Partitions) > 0 }, "the second ingest got no partition")
		mid := l.total()
		testenv.Eventually(t, 60*time.Second, func() bool { return l.total() >= mid+n/16 }, "no progress with two ingests")
		second.stop(t)
		t.Logf("round %d: a second ingest joined at %d and left at %d records processed", i+1, at, l.total())
	}
	lost, dups := e.waitDone(t, l, 3*time.Minute)
	watch.finish(t)
	for p := range e.partitions {
		offs := e.streamOffsets(t, p)
		for i := 1; i < len(offs); i++ {
			if offs[i] != offs[i-1]+1 {
				t.Errorf("partition %d: stream jumps from %d to %d", p, offs[i-1], offs[i])
				break
			}
		}
	}
	st := in.Stats()
	t.Logf("%s: %d records, cap %d: lost=%d duplicates=%d, pauses %d, rebalances %d, duplicates skipped by the append script %d",
		testenv.String(), n, cfg.PartitionCap, lost, dups, st.Pauses, st.Rebalances, st.DuplicatesSkipped)
	if dups != 0 {
		t.Errorf("%d records processed twice with no fault but rebalances", dups)
	}
	if st.Pauses < 10 {
		t.Errorf("only %d pauses: backpressure was not exercised", st.Pauses)
	}
}
