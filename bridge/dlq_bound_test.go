package bridge_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// TestDLQBoundNeverLowersCommit (invariant 3; found by review: Kafka's
// commit went from 100 down to 10): offerCommit (bridge/dlqexport.go) holds
// the offer below the lowest dead letter not yet exported — but never below
// what is already committed. A dead letter of a record far below the commit
// is ordinary: a record handed back by `kbridge dlq replay` that fails again,
// a pending entry of a Redis restored from an old snapshot that reaches max
// deliveries, old dead letters when the export is first turned on. While it
// is not exported (Kafka refuses for a while) the partition commits nothing
// more, and a new generation (whose committer's in-generation guard starts
// empty) does not move Kafka's commit back to it.
func TestDLQBoundNeverLowersCommit(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	testenv.Produce(t, e.brokers, e.topic, 0, 100)
	var refuse atomic.Bool
	start := func() *running {
		return startIngestWith(t, e.config(t), func(in *bridge.Ingest) {
			bridge.SetDLQRefusal(in, func() error {
				if refuse.Load() {
					return kafka.TopicAuthorizationFailed
				}
				return nil
			})
		})
	}
	first := start()
	l := e.startWork(t, 0)
	testenv.Eventually(t, 60*time.Second, func() bool { return e.committed(t, 0) == 100 }, "commit did not reach 100")

	// A dead letter of offset 10 (a replayed record that failed again),
	// not exported while Kafka refuses the dead-letter topic.
	refuse.Store(true)
	if err := e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: wire.DLQKey(e.stream(0)), Values: []string{
		"topic", e.topic, "partition", "0", "offset", "10", "reason", "failed again after replay"}}).Err(); err != nil {
		t.Fatal(err)
	}
	// A new generation (a restart, or any rebalance): the committer's
	// in-generation guard starts empty.
	first.stop(t)
	start()
	testenv.Produce(t, e.brokers, e.topic, 100, 20)
	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() >= 120 }, "processed %d", l.total())
	// Sampled for a while: the commit is held at 100 (the dead letter is
	// not in Kafka yet), neither lowered to it nor moved past it.
	low, high := int64(100), int64(100)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c := e.committed(t, 0)
		low, high = min(low, c), max(high, c)
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("commits seen while the dead letter of offset 10 is not exported: lowest %s, highest %s",
		strconv.FormatInt(low, 10), strconv.FormatInt(high, 10))
	if low < 100 {
		t.Errorf("BACKWARDS: Kafka commit went from 100 down to %d", low)
	}
	if high > 100 {
		t.Errorf("committed %d while a dead letter was not exported: want held at 100", high)
	}
	// Kafka takes the dead letter: the commit reaches the log end.
	refuse.Store(false)
	testenv.Eventually(t, 60*time.Second, func() bool { return e.committed(t, 0) == 120 },
		"commit did not reach 120 once the dead letter was exported (committed %d)", e.committed(t, 0))
}
