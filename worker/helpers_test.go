package worker

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// env is a Redis (miniredis, or REDIS_ADDR) with a unique key prefix.
type env struct {
	rdb    *redis.Client
	prefix string
	mini   bool
}

func newEnv(t *testing.T) *env {
	t.Helper()
	r := testenv.NewRedis(t)
	return &env{rdb: r.Client(t), prefix: testenv.Name(t), mini: r.Mini != nil}
}

// stream creates a partition stream the way the ingest does: each group at
// ID 0 with MKSTREAM, then the registry entry.
func (e *env) stream(t *testing.T, topic string, partition int, groups ...string) string {
	t.Helper()
	ctx := context.Background()
	s := wire.StreamKey(e.prefix, topic, partition)
	if len(groups) == 0 {
		groups = []string{DefaultGroup}
	}
	for _, g := range groups {
		if err := e.rdb.XGroupCreateMkStream(ctx, s, g, "0").Err(); err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
			t.Fatalf("XGROUP CREATE %s %s: %v", s, g, err)
		}
	}
	if err := e.rdb.SAdd(ctx, wire.RegistryKey(e.prefix), s).Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.rdb.Del(context.Background(), s, wire.DLQKey(s), wire.ReplayKey(s), wire.RegistryKey(e.prefix))
	})
	return s
}

// add appends records [from, from+n) of the stream's partition, value "v<offset>".
func (e *env) add(t *testing.T, stream string, from, n int) {
	t.Helper()
	_, topic, part, err := wire.ParseStreamKey(stream)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p := e.rdb.Pipeline()
	for o := from; o < from+n; o++ {
		r := wire.Record{Topic: topic, Partition: part, Offset: int64(o), Time: time.UnixMilli(1700000000000 + int64(o)),
			Key: []byte("k" + strconv.Itoa(o)), Value: []byte("v" + strconv.Itoa(o))}
		p.XAdd(ctx, &redis.XAddArgs{Stream: stream, ID: wire.EntryID(int64(o)), Values: r.AppendFields(nil)})
		if p.Len() >= 500 {
			if _, err := p.Exec(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := p.Exec(ctx); err != nil {
		t.Fatal(err)
	}
}

// pending returns the group's pending count on stream.
func (e *env) pending(t *testing.T, stream, group string) int64 {
	t.Helper()
	p, err := e.rdb.XPending(context.Background(), stream, group).Result()
	if err != nil {
		t.Fatalf("XPENDING %s: %v", stream, err)
	}
	return p.Count
}

// config returns a fast test configuration.
func (e *env) config(h Handler) Config {
	return Config{
		Redis:             e.rdb,
		Handler:           h,
		Prefix:            e.prefix,
		VisibilityTimeout: 600 * time.Millisecond,
		BackoffMin:        20 * time.Millisecond,
		BackoffMax:        100 * time.Millisecond,
		AckInterval:       10 * time.Millisecond,
		DiscoveryInterval: 100 * time.Millisecond,
		BlockTimeout:      100 * time.Millisecond,
		ShutdownTimeout:   5 * time.Second,
	}
}

// running starts w; the returned stop cancels it and returns Run's error.
func running(t *testing.T, w *Worker) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-errc:
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return 30s after cancel")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func mustNew(t *testing.T, cfg Config) *Worker {
	t.Helper()
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// seen records handled offsets per stream.
type seen struct {
	mu sync.Mutex
	n  map[string]map[int64]int
}

func newSeen() *seen { return &seen{n: map[string]map[int64]int{}} }

func (s *seen) add(m *Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := wire.PartitionStreamOf(m.Stream)
	if s.n[k] == nil {
		s.n[k] = map[int64]int{}
	}
	s.n[k][m.Offset]++
}

func (s *seen) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.n {
		n += len(m)
	}
	return n
}

func (s *seen) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.n {
		for _, c := range m {
			n += c
		}
	}
	return n
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func partOf(stream string) string {
	_, _, p, _ := wire.ParseStreamKey(stream)
	return strconv.Itoa(p)
}
