package bridge_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
)

// TestLowWatermarkZero (issue 7 point 9): with LowWatermark ResumeWhenEmpty
// (kbridge ingest --low-watermark 0) a paused partition resumes only once
// its stream is fully acknowledged: acknowledging all but one entry leaves
// it paused through several observations, the last one resumes it. (On main
// a low watermark of 0 could not be set: 0 meant half the cap.)
func TestLowWatermarkZero(t *testing.T) {
	const capacity = 10
	e := newEnv(t, 1)
	testenv.Produce(t, e.brokers, e.topic, 0, 50)
	cfg := e.config(t)
	cfg.PartitionCap, cfg.LowWatermark = capacity, bridge.ResumeWhenEmpty
	cfg.PausedPollInterval = 20 * time.Millisecond
	in := startIngest(t, cfg)
	ctx := context.Background()
	paused := func() bool {
		ps := in.Stats().Partitions
		return len(ps) == 1 && ps[0].Paused
	}
	testenv.Eventually(t, 30*time.Second, paused, "the partition did not pause at the cap: %+v", in.Stats().Partitions)
	appended := in.Stats().Appended
	read := func(n int64) []string {
		res, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: "c", Streams: []string{e.stream(0), ">"}, Count: n}).Result()
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, m := range res[0].Messages {
			ids = append(ids, m.ID)
		}
		return ids
	}
	ids := read(capacity)
	if err := e.rdb.XAck(ctx, e.stream(0), "workers", ids[:len(ids)-1]...).Err(); err != nil {
		t.Fatal(err)
	}
	// Several observations later (paused partitions observe every
	// PausedPollInterval), one unacknowledged entry still holds it.
	since := time.Now()
	testenv.Eventually(t, 10*time.Second, func() bool {
		ps := in.Stats().Partitions
		return len(ps) == 1 && ps[0].Updated.After(since.Add(10*cfg.PausedPollInterval)) && ps[0].Backlog == 1
	}, "the partition did not observe a backlog of 1: %+v", in.Stats().Partitions)
	if !paused() || in.Stats().Appended != appended {
		t.Fatalf("resumed with one entry unacknowledged (low watermark 0): paused %v, appended %d → %d", paused(), appended, in.Stats().Appended)
	}
	if err := e.rdb.XAck(ctx, e.stream(0), "workers", ids[len(ids)-1]).Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return in.Stats().Appended > appended },
		"the partition did not resume with its stream fully acknowledged")
	t.Logf("cap %d, low watermark 0: paused at %d appended; still paused with a backlog of 1; resumed at 0 (appended %d)",
		capacity, appended, in.Stats().Appended)
}
