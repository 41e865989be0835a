package bridge_test

import (
	"context"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestIdlePartitionsCostLittle (issue 10 build 2): once every record of a
// partition is acknowledged and committed, and nothing was appended since,
// a tick does not read its stream again before the idle check interval
// (ten commit intervals): 20 idle partitions take a few snapshots a second
// instead of one each per interval. A loss of Redis on an idle partition
// (its stream deleted) is still seen within the idle check interval plus an
// interval, and its records come back.
func TestIdlePartitionsCostLittle(t *testing.T) {
	const partitions = 20
	e := newEnv(t, partitions)
	testenv.Produce(t, e.brokers, e.topic, 0, 10*partitions)
	cfg := e.config(t)
	in := startIngest(t, cfg)
	l := e.startWork(t, 0)
	end := testenv.LogEnd(t, e.brokers, e.topic, partitions)
	testenv.Eventually(t, 60*time.Second, func() bool {
		return l.total() == 10*partitions && sameOffsets(testenv.Committed(t, e.brokers, e.group, e.topic, partitions), end)
	}, "records not all processed and committed")

	idle := cfg.IdleCheckInterval()
	// wait until the partitions went quiet: a snapshot after the commit
	// landed, one more after the trim
	settled := time.Now()
	testenv.Eventually(t, 10*time.Second, func() bool { return time.Since(settled) >= 3*cfg.CommitInterval }, "")
	const window = 3 * time.Second
	before, t0 := in.Stats().Observations, time.Now()
	testenv.Eventually(t, window+10*time.Second, func() bool { return time.Since(t0) >= window }, "")
	got := float64(in.Stats().Observations-before) / time.Since(t0).Seconds()
	busy := float64(partitions) / cfg.CommitInterval.Seconds()
	t.Logf("%s: %d idle partitions: %.1f stream snapshots/s (commit interval %v, idle check %v); %.0f/s if each were read every interval",
		testenv.String(), partitions, got, cfg.CommitInterval, idle, busy)
	if limit := 2 * float64(partitions) / idle.Seconds(); got > limit {
		t.Errorf("%.1f snapshots/s of idle partitions, want at most %.1f (about one per partition per %v)", got, limit, idle)
	}

	// Redis loses partition 3's stream: seen within idle + an interval
	losses := in.Stats().Losses
	lostAt := time.Now()
	if err := e.rdb.Del(context.Background(), e.stream(3)).Err(); err != nil {
		t.Fatal(err)
	}
	bound := idle + 2*cfg.CommitInterval
	testenv.Eventually(t, bound+5*time.Second, func() bool { return in.Stats().Losses > losses }, "the loss of an idle stream was not seen")
	seen := time.Since(lostAt)
	t.Logf("the loss of an idle partition's stream was seen after %v (bound: idle check %v + an interval)", seen.Round(time.Millisecond), idle)
	if seen > bound+time.Second { // a loaded machine is granted a second
		t.Errorf("loss seen after %v, want within %v", seen, bound)
	}
	// everything was acknowledged and committed: nothing comes back
	testenv.Eventually(t, 30*time.Second, func() bool { return e.unacked(t, 3) == 0 }, "partition 3 not back to idle")
	if lost, _ := l.check(end); lost != 0 {
		t.Errorf("%d records lost", lost)
	}
}
