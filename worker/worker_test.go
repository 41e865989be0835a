package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

func TestConfigValidate(t *testing.T) {
	e := newEnv(t)
	h := func(context.Context, *Message) error { return nil }
	tests := []struct {
		name string
		cfg  Config
		want []string // substrings of the error; none: valid
	}{
		{"defaults", Config{Redis: e.rdb, Handler: h}, nil},
		{"missing both", Config{}, []string{"Redis client is required", "Handler is required"}},
		{"negatives", Config{Redis: e.rdb, Handler: h, Concurrency: -1, MaxDeliveries: -2, VisibilityTimeout: -time.Second},
			[]string{"concurrency -1", "max deliveries -2", "visibility timeout -1s"}},
		{"backoff order", Config{Redis: e.rdb, Handler: h, BackoffMin: time.Minute, BackoffMax: time.Second},
			[]string{"backoff max 1s must not be below backoff min 1m0s"}},
		{"tiny visibility", Config{Redis: e.rdb, Handler: h, VisibilityTimeout: time.Millisecond}, []string{"too short"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want errors %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
			if _, nerr := New(tt.cfg); nerr == nil {
				t.Errorf("New accepted a config Validate rejects")
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	c := Config{BackoffMin: time.Second, BackoffMax: 5 * time.Second}
	for n, want := range map[int64]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 5 * time.Second, 40: 5 * time.Second} {
		if got := c.backoff(n); got != want {
			t.Errorf("backoff(%d) = %v, want %v", n, got, want)
		}
	}
}

// TestProcessesEverything: every entry of several streams is handled once,
// with its fields, and acknowledged; a stream registered while the worker
// runs is picked up.
func TestProcessesEverything(t *testing.T) {
	e := newEnv(t)
	s0 := e.stream(t, "orders", 0)
	s1 := e.stream(t, "orders", 1)
	e.add(t, s0, 0, 300)
	e.add(t, s1, 0, 200)
	got := newSeen()
	var bad atomic.Value
	w := mustNew(t, func() Config {
		c := e.config(func(ctx context.Context, m *Message) error {
			if want := fmt.Sprintf("v%d", m.Offset); string(m.Value) != want || m.Topic != "orders" || m.Deliveries != 1 ||
				string(m.Key) != fmt.Sprintf("k%d", m.Offset) || m.Time.UnixMilli() != 1700000000000+m.Offset {
				bad.Store(fmt.Sprintf("message %+v", m))
			}
			got.add(m)
			return nil
		})
		c.Concurrency = 8
		return c
	}())
	stop := running(t, w)
	testenv.Eventually(t, 10*time.Second, func() bool { return got.distinct() == 500 }, "handled %d of 500", got.distinct())

	s2 := e.stream(t, "orders", 2)
	e.add(t, s2, 0, 50)
	testenv.Eventually(t, 10*time.Second, func() bool { return got.distinct() == 550 }, "handled %d of 550 after adding a partition", got.distinct())
	if err := stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if b := bad.Load(); b != nil {
		t.Fatalf("bad %v", b)
	}
	if got.total() != 550 {
		t.Errorf("handler calls = %d, want 550 (no duplicates)", got.total())
	}
	for _, s := range []string{s0, s1, s2} {
		if n := e.pending(t, s, DefaultGroup); n != 0 {
			t.Errorf("%s: %d pending after shutdown, want 0", s, n)
		}
	}
	st := w.Stats()
	if st.Processed != 550 || st.Acked != 550 || st.InFlight != 0 || st.Held != 0 {
		t.Errorf("Stats = %+v, want 550 processed and acked, nothing in flight or held", st)
	}
}

// TestFairness: with one handler slot, a partition with a big backlog does
// not hold back a partition with a few entries.
func TestFairness(t *testing.T) {
	e := newEnv(t)
	busy := e.stream(t, "t", 0)
	quiet := e.stream(t, "t", 1)
	e.add(t, busy, 0, 2000)
	e.add(t, quiet, 0, 5)
	var mu sync.Mutex
	var order []string
	w := mustNew(t, func() Config {
		c := e.config(func(ctx context.Context, m *Message) error {
			mu.Lock()
			order = append(order, m.Stream)
			mu.Unlock()
			return nil
		})
		c.Concurrency = 4
		return c
	}())
	running(t, w)
	testenv.Eventually(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, s := range order {
			if s == quiet {
				n++
			}
		}
		return n == 5
	}, "quiet partition not served")
	mu.Lock()
	defer mu.Unlock()
	last, n := 0, 0
	for i, s := range order {
		if s == quiet {
			last, n = i, n+1
		}
		if n == 5 {
			break
		}
	}
	if last >= 20 {
		t.Errorf("the quiet partition's 5th entry was handled as number %d; want within the first 20", last+1)
	}
}

// TestRetryThenSuccess: a failing handler is retried with the delivery count
// Redis keeps, and the entry is acknowledged once it succeeds; a panic is a
// failure like an error.
func TestRetryThenSuccess(t *testing.T) {
	for _, mode := range []string{"error", "panic"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t)
			s := e.stream(t, "t", 0)
			e.add(t, s, 0, 1)
			var deliveries []int64
			var mu sync.Mutex
			done := make(chan struct{})
			w := mustNew(t, e.config(func(ctx context.Context, m *Message) error {
				mu.Lock()
				defer mu.Unlock()
				deliveries = append(deliveries, m.Deliveries)
				if len(deliveries) < 3 {
					if mode == "panic" {
						panic("boom")
					}
					return errors.New("boom")
				}
				close(done)
				return nil
			}))
			stop := running(t, w)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("handler never succeeded")
			}
			testenv.Eventually(t, 5*time.Second, func() bool { return e.pending(t, s, DefaultGroup) == 0 }, "entry still pending")
			stop()
			if fmt.Sprint(deliveries) != "[1 2 3]" {
				t.Errorf("deliveries seen = %v, want [1 2 3]", deliveries)
			}
			if st := w.Stats(); st.Failed != 2 || st.Retries != 2 || st.Processed != 1 || st.DeadLettered != 0 {
				t.Errorf("Stats = %+v, want 2 failed, 2 retries, 1 processed", st)
			}
		})
	}
}

// TestPoisonDeadLettered: an entry whose handler always fails is written to
// the dead-letter stream with its error after MaxDeliveries deliveries, and
// acknowledged; the entries after it are processed. A Permanent error and a
// malformed entry are dead-lettered at once.
func TestPoisonDeadLettered(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 10)
	// a malformed entry at offset 10 (no offset field)
	if err := e.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: s, ID: wire.EntryID(10), Values: []any{"topic", "t", "partition", "0"}}).Err(); err != nil {
		t.Fatal(err)
	}
	e.add(t, s, 11, 5)
	got := newSeen()
	var calls3 atomic.Int64
	w := mustNew(t, func() Config {
		c := e.config(func(ctx context.Context, m *Message) error {
			switch m.Offset {
			case 3:
				calls3.Add(1)
				return fmt.Errorf("cannot handle offset %d", m.Offset)
			case 7:
				return Permanent(errors.New("bad record"))
			}
			got.add(m)
			return nil
		})
		c.MaxDeliveries = 3
		return c
	}())
	stop := running(t, w)
	testenv.Eventually(t, 10*time.Second, func() bool {
		n, _ := e.rdb.XLen(context.Background(), wire.DLQKey(s)).Result()
		return n == 3 && e.pending(t, s, DefaultGroup) == 0
	}, "want 3 dead letters and nothing pending")
	stop()
	if got.distinct() != 13 {
		t.Errorf("handled %d, want 13", got.distinct())
	}
	if calls3.Load() != 3 {
		t.Errorf("poison handler calls = %d, want 3 (MaxDeliveries)", calls3.Load())
	}
	dls, err := ListDeadLetters(context.Background(), e.rdb, e.prefix, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		reason string
		err    string
		deliv  int64
	}{
		"3":  {wire.ReasonMaxDeliveries, "cannot handle offset 3", 3},
		"7":  {wire.ReasonRejected, "bad record", 1},
		"10": {wire.ReasonMalformed, "malformed entry", 1},
	}
	for _, d := range dls {
		key := fmt.Sprint(d.Offset)
		if d.Malformed {
			key = "10"
		}
		wnt, ok := want[key]
		if !ok {
			t.Errorf("unexpected dead letter %+v", d)
			continue
		}
		delete(want, key)
		if d.Info.Reason != wnt.reason || !strings.Contains(d.Info.Error, wnt.err) || d.Info.Deliveries != wnt.deliv ||
			d.Info.Group != DefaultGroup || d.Info.Consumer != w.Consumer() || d.Info.Stream != s {
			t.Errorf("dead letter of %s = %+v, want reason %s, error ~%q, %d deliveries", key, d.Info, wnt.reason, wnt.err, wnt.deliv)
		}
	}
	if len(want) > 0 {
		t.Errorf("missing dead letters: %v", want)
	}
	if st := w.Stats(); st.DeadLettered != 3 {
		t.Errorf("Stats.DeadLettered = %d, want 3", st.DeadLettered)
	}
}
