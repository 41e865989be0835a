package bridge_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// env is one test's Kafka topic, Redis and names.
type env struct {
	brokers    []string
	redis      *testenv.Redis
	rdb        *redis.Client
	topic      string
	group      string
	prefix     string
	partitions int
}

func newEnv(t *testing.T, partitions int) *env {
	t.Helper()
	t.Logf("environment: %s", testenv.String())
	e := &env{brokers: testenv.Kafka(t), redis: testenv.NewRedis(t), partitions: partitions}
	name := testenv.Name(t)
	e.topic, e.group, e.prefix = name, "g-"+name, "kbt-"+name
	e.rdb = e.redis.Client(t)
	testenv.CreateTopic(t, e.brokers, e.topic, partitions)
	return e
}

func (e *env) config(t *testing.T) bridge.Config {
	level := slog.LevelWarn
	if os.Getenv("KBRIDGE_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	return bridge.Config{
		Brokers: e.brokers, Topics: []string{e.topic}, Group: e.group,
		Redis: e.rdb, Prefix: e.prefix,
		CommitInterval:    cfgCommitInterval,
		SessionTimeout:    6 * time.Second,
		RebalanceTimeout:  15 * time.Second,
		HeartbeatInterval: 500 * time.Millisecond,
		FetchMaxWait:      100 * time.Millisecond,
		AllowEviction:     e.redis.Mini != nil,
		Logger:            slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level})),
	}
}

// useRedis points e at another Redis (a redis-server of the test's own).
func (e *env) useRedis(t *testing.T, addr string) {
	e.redis = &testenv.Redis{Addr: addr}
	e.rdb = e.redis.Client(t)
}

func (e *env) stream(p int) string { return wire.StreamKey(e.prefix, e.topic, p) }

// running is an Ingest running in the test process.
type running struct {
	*bridge.Ingest
	cancel context.CancelFunc
	done   chan error
}

func startIngest(t *testing.T, cfg bridge.Config) *running {
	t.Helper()
	in, err := bridge.New(cfg)
	if err != nil {
		t.Fatalf("bridge.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Ingest: in, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- in.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels the ingest and waits for Run to return (once).
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok && err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
		if ok {
			close(r.done)
		}
	case <-time.After(60 * time.Second):
		t.Errorf("Run did not return within 60s of cancel")
	}
}

// committed returns the group's committed offset of partition p (-1: none).
func (e *env) committed(t *testing.T, p int) int64 {
	return testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)[p]
}

// ledger counts what a test worker processed, per partition and offset.
type ledger struct {
	mu   sync.Mutex
	seen map[int]map[int64]int
}

func newLedger() *ledger { return &ledger{seen: map[int]map[int64]int{}} }

func (l *ledger) add(p int, off int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen[p] == nil {
		l.seen[p] = map[int64]int{}
	}
	l.seen[p][off]++
}

// check reports lost offsets (in [0, end[p]) and never processed) and
// duplicates (processed more than once).
func (l *ledger) check(end map[int]int64) (lost, dups int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for p, e := range end {
		for off := int64(0); off < e; off++ {
			switch n := l.seen[p][off]; {
			case n == 0:
				lost++
			case n > 1:
				dups += n - 1
			}
		}
	}
	return lost, dups
}

func (l *ledger) total() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.seen {
		n += len(m)
	}
	return n
}

// work runs a test worker on every partition stream of e in group "workers":
// it reads, records each entry in the ledger, waits delay, and acks. It stops
// when ctx is done. Redis errors (a restart) are retried.
func (e *env) work(ctx context.Context, t *testing.T, l *ledger, delay time.Duration) *sync.WaitGroup {
	all := make([]int, e.partitions)
	for p := range all {
		all[p] = p
	}
	return e.workGroup(ctx, t, l, delay, "workers", all)
}

// workGroup is work in another consumer group, on some partitions.
func (e *env) workGroup(ctx context.Context, t *testing.T, l *ledger, delay time.Duration, group string, partitions []int) *sync.WaitGroup {
	var wg sync.WaitGroup
	for _, p := range partitions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := e.stream(p)
			for ctx.Err() == nil {
				res, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
					Group: group, Consumer: "c", Streams: []string{key, ">"}, Count: 100, Block: 100 * time.Millisecond,
				}).Result()
				if err != nil {
					if !errors.Is(err, redis.Nil) && ctx.Err() == nil {
						if !redis.HasErrorPrefix(err, "NOGROUP") {
							t.Logf("worker read %s: %v", key, err)
						}
						time.Sleep(50 * time.Millisecond) // no group yet, or Redis restarting
					}
					continue
				}
				for _, s := range res {
					ids := make([]string, 0, len(s.Messages))
					for _, m := range s.Messages {
						rec, err := wire.Decode(m.Values)
						if err != nil {
							t.Errorf("decode %s %s: %v", key, m.ID, err)
							continue
						}
						if delay > 0 {
							time.Sleep(delay)
						}
						l.add(rec.Partition, rec.Offset)
						ids = append(ids, m.ID)
					}
					// Ack after the work, as a worker must; a failed ack
					// (Redis restarting) leaves them pending: redelivered.
					e.rdb.XAck(context.Background(), key, group, ids...)
				}
			}
		}()
	}
	return &wg
}

// startWork starts e.work with a fresh ledger, stopped when the test ends
// (before the ingest, whose clean-up was registered earlier).
func (e *env) startWork(t *testing.T, delay time.Duration) *ledger {
	l := newLedger()
	ctx, cancel := context.WithCancel(context.Background())
	wg := e.work(ctx, t, l, delay)
	t.Cleanup(func() { cancel(); wg.Wait() })
	return l
}

// duplicateEntries counts entries of the streams with the same offset twice
// (impossible by construction: IDs are offsets), and checks each stream holds
// a gap-free run of offsets.
func (e *env) streamOffsets(t *testing.T, p int) []int64 {
	msgs, err := e.rdb.XRange(context.Background(), e.stream(p), "-", "+").Result()
	if err != nil {
		t.Fatalf("XRANGE %s: %v", e.stream(p), err)
	}
	out := make([]int64, len(msgs))
	for i, m := range msgs {
		off, err := wire.ParseID(m.ID)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = off
	}
	return out
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}

// unacked counts the entries of partition p's stream that group "workers"
// has not acknowledged: pending, plus not yet delivered.
func (e *env) unacked(t *testing.T, p int) int64 {
	ctx := context.Background()
	groups, err := e.rdb.XInfoGroups(ctx, e.stream(p)).Result()
	if err != nil || len(groups) == 0 {
		return 0
	}
	pending, err := e.rdb.XPending(ctx, e.stream(p), "workers").Result()
	if err != nil {
		return 0
	}
	after, err := e.rdb.XRange(ctx, e.stream(p), "("+groups[0].LastDeliveredID, "+").Result()
	if err != nil {
		return 0
	}
	return pending.Count + int64(len(after))
}
