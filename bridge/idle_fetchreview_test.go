package bridge_test

import (
	"context"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// TestFetchReviewIdleLossBound (issue 10 build 2, docs/design.md "Idle
// partitions"): on partitions that went idle — every entry acknowledged and
// committed, and one partition that never had a record — Redis restarts
// empty. The docs promise the loss is noticed within IdleCheckInterval plus
// one commit interval: the worker groups exist again on every stream and
// the streams are registered, so workers read again. Records produced
// afterwards are all processed (0 lost) and the commits reach the log ends.
func TestFetchReviewIdleLossBound(t *testing.T) {
	const parts = 3
	e := newEnv(t, parts)
	var restart func()
	if e.redis.Mini != nil {
		restart = func() { e.redis.Mini.FlushAll() }
	} else {
		srv := testenv.StartRedisServer(t, "none")
		e.useRedis(t, srv.Addr())
		restart = func() { srv.Crash(t); srv.Start(t) }
	}
	writeSized(t, e.brokers, e.topic, 0, 0, 100, 100, 100, 100, 100)
	writeSized(t, e.brokers, e.topic, 1, 0, 100, 100, 100)
	// partition 2 stays empty
	cfg := e.config(t)
	cfg.CommitInterval = 200 * time.Millisecond
	idle := cfg.IdleCheckInterval()
	in := startIngest(t, cfg)
	l := e.startWork(t, 0)
	end := testenv.LogEnd(t, e.brokers, e.topic, parts)
	testenv.Eventually(t, 30*time.Second, func() bool {
		return sameOffsets(testenv.Committed(t, e.brokers, e.group, e.topic, parts), end)
	}, "commits did not reach the log ends %v", end)
	// idle: observations all but stop
	testenv.Eventually(t, 30*time.Second, func() bool {
		o := in.Stats().Observations
		time.Sleep(3 * cfg.CommitInterval)
		return in.Stats().Observations-o <= 1
	}, "the partitions never went quiet")
	losses := in.Stats().Losses
	restart()
	t0 := time.Now()
	ctx := context.Background()
	ready := func() bool {
		for p := range parts {
			gs, err := e.rdb.XInfoGroups(ctx, e.stream(p)).Result()
			if err != nil || len(gs) == 0 {
				return false
			}
			if ok, err := e.rdb.SIsMember(ctx, wire.RegistryKey(e.prefix), e.stream(p)).Result(); err != nil || !ok {
				return false
			}
		}
		return true
	}
	bound := idle + cfg.CommitInterval
	testenv.Eventually(t, 4*bound+10*time.Second, ready, "the worker groups and the registry were not recreated after Redis restarted empty")
	took := time.Since(t0)
	st := in.Stats()
	t.Logf("%s: idle partitions, Redis restarted empty: worker groups and registry back for all %d streams after %v (bound IdleCheckInterval %v + commit interval %v = %v); losses counted %d",
		testenv.String(), parts, took.Round(time.Millisecond), idle, cfg.CommitInterval, bound, st.Losses-losses)
	if took > bound+time.Second {
		t.Errorf("the loss on idle partitions was noticed after %v, the docs bound it by %v", took, bound)
	}
	// and it goes on: new records on every partition, none lost
	for p := range parts {
		writeSized(t, e.brokers, e.topic, p, 0, 100, 100)
	}
	lost, dups := e.waitDone(t, l, 60*time.Second)
	t.Logf("after the loss: lost=%d duplicates=%d", lost, dups)
}
