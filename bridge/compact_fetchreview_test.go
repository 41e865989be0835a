package bridge_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestFetchReviewCompactedWhileRunning (issue 7 point 4), real Kafka: a
// compacted topic (segment.ms 100, dirty ratio 0.001) written all through
// the test — 20 keys overwritten again and again, one write in five a
// tombstone — so the cleaner removes records, whole batches and tail
// batches of closed segments while the ingest fetches 1 KiB at a time, and
// the ingest is restarted once mid-way (it starts again from a commit that
// may point into a range compacted since). Promised: no spin, every record
// still in the log at the end was processed, every commit reaches the log
// end.
func TestFetchReviewCompactedWhileRunning(t *testing.T) {
	if !testenv.RealKafka() {
		t.Skip("kfake does not compact: needs a real Kafka broker (KAFKA_BROKERS)")
	}
	e := &env{brokers: testenv.Kafka(t), redis: testenv.NewRedis(t), partitions: 1}
	name := testenv.Name(t)
	e.topic, e.group, e.prefix = name, "g-"+name, "kbt-"+name
	e.rdb = e.redis.Client(t)
	createTopicWith(t, e.brokers, e.topic, 1, map[string]string{
		"cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.001",
		"min.compaction.lag.ms": "0", "delete.retention.ms": "100", "max.compaction.lag.ms": "1000",
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	written := 0
	go func() {
		defer wg.Done()
		w := &kafka.Writer{Addr: kafka.TCP(e.brokers...), Topic: e.topic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
		defer w.Close()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			msgs := make([]kafka.Message, 5)
			for k := range msgs {
				m := kafka.Message{Key: []byte("k" + strconv.Itoa((i*5+k)%20)), Value: []byte(strconv.Itoa(i))}
				if k == 4 {
					m.Value = nil // a tombstone
				}
				msgs[k] = m
			}
			if err := w.WriteMessages(ctx, msgs...); err == nil {
				written += len(msgs)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	cfg := e.config(t)
	cfg.FetchMaxBytes = 1024
	in := startIngest(t, cfg)
	l := e.startWork(t, 0)
	time.Sleep(8 * time.Second)
	in.stop(t)
	in = startIngest(t, cfg)
	time.Sleep(8 * time.Second)
	close(stop)
	wg.Wait()
	end := testenv.LogEnd(t, e.brokers, e.topic, 1)
	testenv.Eventually(t, 60*time.Second, func() bool {
		return sameOffsets(testenv.Committed(t, e.brokers, e.group, e.topic, 1), end)
	}, "commit %v did not reach the log end %v", later(func() any { return testenv.Committed(t, e.brokers, e.group, e.topic, 1) }), end)
	// every record still in the log (read with franz-go, read_uncommitted
	// is the same here: no transactions) was processed
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{e.topic: {0: kgo.NewOffset().AtStart()}}))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var left []int64
	for done := false; !done; {
		pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
		fs := cl.PollFetches(pctx)
		pcancel()
		if fs.NumRecords() == 0 {
			break
		}
		fs.EachRecord(func(r *kgo.Record) {
			left = append(left, r.Offset)
			if r.Offset >= end[0]-1 {
				done = true
			}
		})
	}
	missing := 0
	l.mu.Lock()
	for _, off := range left {
		if l.seen[0][off] == 0 {
			missing++
			if missing <= 5 {
				t.Errorf("offset %d holds a record that was not processed", off)
			}
		}
	}
	l.mu.Unlock()
	if len(left) == 0 {
		t.Errorf("no record left in the log: the test tested nothing")
	}
	const window = 2 * time.Second
	before := in.Stats().Fetches
	time.Sleep(window)
	fetches := in.Stats().Fetches - before
	if plain := int64(window / cfg.FetchMaxWait); fetches > 2*plain+1 {
		t.Errorf("%d fetch requests in %v at the tail, want at most about 2 × %d: a hot loop", fetches, window, plain)
	}
	t.Logf("compacted while running: %d written, log end %d, %d records left in the log (%d not processed), %d processed; committed = log end; %d fetch requests in %v at the tail",
		written, end[0], len(left), missing, l.total(), fetches, window)
}
