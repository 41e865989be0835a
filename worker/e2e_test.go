package worker

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// pipeline is a Kafka topic, a Redis and an in-process ingest bridging them.
type pipeline struct {
	*env
	redisAddr  string
	brokers    []string
	topic      string
	group      string // the ingest's Kafka group
	partitions int
	stopIngest func()
}

func newPipeline(t *testing.T, partitions int, workerGroups ...string) *pipeline {
	t.Helper()
	r := testenv.NewRedis(t)
	p := &pipeline{
		env:        &env{rdb: r.Client(t), prefix: testenv.Name(t), mini: r.Mini != nil},
		redisAddr:  r.Addr,
		brokers:    testenv.Kafka(t),
		topic:      testenv.Name(t),
		group:      testenv.Name(t),
		partitions: partitions,
	}
	testenv.CreateTopic(t, p.brokers, p.topic, partitions)
	in, err := bridge.New(bridge.Config{
		Brokers:        p.brokers,
		Topics:         []string{p.topic},
		Group:          p.group,
		Redis:          p.rdb,
		Prefix:         p.prefix,
		WorkerGroups:   workerGroups,
		CommitInterval: 200 * time.Millisecond,
		PartitionCap:   100000,
		AllowEviction:  true,
		Logger:         testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	var once sync.Once
	p.stopIngest = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("ingest Run = %v", err)
			}
		})
	}
	t.Cleanup(p.stopIngest)
	return p
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() && os.Getenv("KBRIDGE_TEST_LOGS") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return nil
}

// committedAll waits until the ingest's Kafka commits reach the log end of
// every partition.
func (p *pipeline) committedAll(t *testing.T, within time.Duration) {
	t.Helper()
	end := testenv.LogEnd(t, p.brokers, p.topic, p.partitions)
	var got map[int]int64
	testenv.Eventually(t, within, func() bool {
		got = testenv.Committed(t, p.brokers, p.group, p.topic, p.partitions)
		for part, e := range end {
			if got[part] != e {
				return false
			}
		}
		return true
	}, "commits %v, want the log end %v", func() any { return got }(), end)
}

func (p *pipeline) streams() []string {
	var s []string
	for i := range p.partitions {
		s = append(s, wire.StreamKey(p.prefix, p.topic, i))
	}
	return s
}

// TestEndToEndPoisonAndReplay: records go Kafka → ingest → Redis → worker.
// A poison record (its handler always fails) is dead-lettered after
// MaxDeliveries with its error, and the ingest's commits move past it to the
// log end. Replayed, it is completed by the fixed handler.
func TestEndToEndPoisonAndReplay(t *testing.T) {
	t.Log(testenv.String())
	p := newPipeline(t, 2)
	testenv.Produce(t, p.brokers, p.topic, 0, 400)
	var fixed atomic.Bool
	got := newSeen()
	var poisonCalls atomic.Int64
	cfg := p.config(func(ctx context.Context, m *Message) error {
		if string(m.Value) == "v123" && !fixed.Load() {
			poisonCalls.Add(1)
			return errors.New("v123 breaks the parser")
		}
		got.add(m)
		return nil
	})
	cfg.MaxDeliveries = 4
	cfg.Concurrency = 8
	w := mustNew(t, cfg)
	running(t, w)

	start := time.Now()
	p.committedAll(t, 60*time.Second)
	t.Logf("399 records processed, 1 dead-lettered, commits at the log end after %v", time.Since(start).Round(time.Millisecond))
	if got.distinct() != 399 || poisonCalls.Load() != 4 {
		t.Fatalf("handled %d distinct records, poison handler called %d times; want 399 and 4", got.distinct(), poisonCalls.Load())
	}
	dls, err := ListDeadLetters(context.Background(), p.rdb, p.prefix, Filter{Topic: p.topic})
	if err != nil || len(dls) != 1 {
		t.Fatalf("dead letters = %d, %v; want 1", len(dls), err)
	}
	if d := dls[0]; string(d.Value) != "v123" || d.Info.Error != "v123 breaks the parser" || d.Info.Deliveries != 4 || d.Info.Reason != wire.ReasonMaxDeliveries {
		t.Fatalf("dead letter = %+v", d)
	}
	fixed.Store(true)
	if n, err := ReplayDeadLetters(context.Background(), p.rdb, dls); n != 1 || err != nil {
		t.Fatalf("replay = %d, %v", n, err)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return got.distinct() == 400 }, "replayed record not completed")
	if got.total() != 400 {
		t.Errorf("handler successes = %d, want 400 (no duplicates)", got.total())
	}
}
