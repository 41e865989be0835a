package worker

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// TestReclaimFromDeadConsumer: entries a consumer read and never
// acknowledged (it died) are reclaimed after the visibility timeout, with
// their delivery count, and the dead consumer is left with nothing pending.
// An entry already delivered MaxDeliveries times by dying workers is
// dead-lettered instead of run again.
func TestReclaimFromDeadConsumer(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 20)
	ctx := context.Background()
	// "dead" reads 10 entries and vanishes.
	if err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "dead", Streams: []string{s, ">"}, Count: 10}).Err(); err != nil {
		t.Fatal(err)
	}
	// offset 0 was already delivered 3 times (MaxDeliveries): a crash loop.
	if err := e.rdb.XClaim(ctx, &redis.XClaimArgs{Stream: s, Group: DefaultGroup, Consumer: "dead", Messages: []string{"0-1"}}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.XClaim(ctx, &redis.XClaimArgs{Stream: s, Group: DefaultGroup, Consumer: "dead", Messages: []string{"0-1"}}).Err(); err != nil {
		t.Fatal(err)
	}
	// ... and its handler was started each time (start.lua's record): it
	// ran MaxDeliveries times. The other 9 entries were only read.
	if err := e.rdb.HSet(ctx, wire.RunsKey(s, DefaultGroup), "0-1", 3).Err(); err != nil {
		t.Fatal(err)
	}
	got := newSeen()
	var maxDeliv atomic.Int64
	cfg := e.config(func(ctx context.Context, m *Message) error {
		got.add(m)
		if m.Offset < 10 && m.Deliveries != 2 {
			maxDeliv.Store(m.Deliveries)
		}
		return nil
	})
	cfg.MaxDeliveries = 3
	w := mustNew(t, cfg)
	start := time.Now()
	running(t, w)
	testenv.Eventually(t, 10*time.Second, func() bool { return got.distinct() == 19 }, "handled %d of 19", got.distinct())
	if took := time.Since(start); took < cfg.VisibilityTimeout/2 {
		t.Errorf("reclaimed after %v, before the entries were idle for the visibility timeout %v", took, cfg.VisibilityTimeout)
	}
	if d := maxDeliv.Load(); d != 0 {
		t.Errorf("a reclaimed entry was delivered with count %d, want 2", d)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return e.pending(t, s, DefaultGroup) == 0 }, "entries still pending")
	if n, _ := e.rdb.XLen(ctx, s+":dlq").Result(); n != 1 {
		t.Errorf("dead letters = %d, want 1 (offset 0, delivered 4 times)", n)
	}
	if st := w.Stats(); st.Reclaimed != 10 {
		t.Errorf("Stats.Reclaimed = %d, want 10", st.Reclaimed)
	}
}

// TestLeaseExtended: a handler running for three visibility timeouts keeps
// its entry; a second worker polling for idle entries all along never gets
// it. The record is processed exactly once.
func TestLeaseExtended(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 1)
	var calls atomic.Int64
	var first atomic.Pointer[Worker]
	release := make(chan struct{})
	started := make(chan struct{}, 2)
	h := func(ctx context.Context, m *Message) error {
		calls.Add(1)
		started <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	}
	cfg := e.config(h)
	cfg.VisibilityTimeout = 300 * time.Millisecond
	cfg.ReclaimInterval = 20 * time.Millisecond
	w1 := mustNew(t, cfg)
	first.Store(w1)
	stop1 := running(t, w1)
	<-started
	w2 := mustNew(t, cfg)
	stop2 := running(t, w2)
	deadline := time.Now().Add(3 * cfg.VisibilityTimeout)
	for time.Now().Before(deadline) {
		if n := calls.Load(); n != 1 {
			t.Fatalf("handler calls = %d while the first still runs, want 1", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	testenv.Eventually(t, 5*time.Second, func() bool { return e.pending(t, s, DefaultGroup) == 0 }, "entry still pending")
	stop1()
	stop2()
	if n := calls.Load(); n != 1 {
		t.Errorf("handler calls = %d, want 1", n)
	}
	if st := w2.Stats(); st.Reclaimed != 0 {
		t.Errorf("second worker reclaimed %d entries, want 0", st.Reclaimed)
	}
	if st := w1.Stats(); st.LeaseLost != 0 {
		t.Errorf("first worker lost %d leases, want 0", st.LeaseLost)
	}
}

// TestShutdown: cancelling Run stops reading, lets running handlers finish,
// flushes their acks and removes the consumer (it has nothing pending).
// With a handler that outlives ShutdownTimeout, Run returns
// ErrShutdownTimeout, the entry stays pending and the consumer is kept.
func TestShutdown(t *testing.T) {
	for _, tt := range []struct {
		name         string
		stuck        bool
		wantErr      error
		wantPending  int64
		wantConsumer bool
	}{
		{"graceful", false, nil, 0, false},
		{"timeout", true, ErrShutdownTimeout, 1, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			s := e.stream(t, "t", 0)
			e.add(t, s, 0, 1)
			started := make(chan struct{})
			finished := atomic.Bool{}
			cfg := e.config(func(ctx context.Context, m *Message) error {
				close(started)
				if tt.stuck {
					<-ctx.Done() // released only by the shutdown timeout
					return ctx.Err()
				}
				time.Sleep(200 * time.Millisecond) // work in flight at the signal
				finished.Store(true)
				return nil
			})
			cfg.ShutdownTimeout = 500 * time.Millisecond
			cfg.AckInterval = time.Hour // only the shutdown flush sends the ack
			w := mustNew(t, cfg)
			stop := running(t, w)
			<-started
			err := stop()
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Run = %v, want %v", err, tt.wantErr)
			}
			if !tt.stuck && !finished.Load() {
				t.Error("Run returned before the in-flight handler finished")
			}
			if n := e.pending(t, s, DefaultGroup); n != tt.wantPending {
				t.Errorf("pending = %d, want %d", n, tt.wantPending)
			}
			cs, err := e.rdb.XInfoConsumers(context.Background(), s, DefaultGroup).Result()
			if err != nil {
				t.Fatal(err)
			}
			if has := len(cs) == 1 && cs[0].Name == w.Consumer(); has != tt.wantConsumer {
				t.Errorf("consumers after shutdown = %+v; want ours kept: %v", cs, tt.wantConsumer)
			}
		})
	}
}

// TestDelConsumerKeepsPending: the clean-up script refuses to delete a
// consumer with pending entries (invariant 9), and deletes one without.
func TestDelConsumerKeepsPending(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 1)
	ctx := context.Background()
	if err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "busy", Streams: []string{s, ">"}, Count: 1}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.XGroupCreateConsumer(ctx, s, DefaultGroup, "idle").Err(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		consumer string
		want     int64
	}{{"busy", -1}, {"idle", 0}} {
		n, err := delConsumerScript.Run(ctx, e.rdb, []string{s}, DefaultGroup, tt.consumer).Int64()
		if err != nil || n != tt.want {
			t.Errorf("delete %s = %d, %v; want %d", tt.consumer, n, err, tt.want)
		}
	}
	if n := e.pending(t, s, DefaultGroup); n != 1 {
		t.Errorf("pending = %d after the clean-up, want 1", n)
	}
}

// TestIdleConsumersRemoved: a worker deletes consumers of its group idle for
// ConsumerIdleTimeout with nothing pending, and only those.
func TestIdleConsumersRemoved(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 1)
	ctx := context.Background()
	if err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "holder", Streams: []string{s, ">"}, Count: 1}).Err(); err != nil {
		t.Fatal(err)
	}
	// "gone" reads nothing (XREADGROUP, so that miniredis too records when
	// it was last seen).
	if err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "gone", Streams: []string{s, ">"}, Count: 1, Block: -1}).Err(); err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	cfg := e.config(func(context.Context, *Message) error { return errors.New("keep it pending") })
	cfg.ConsumerIdleTimeout = 50 * time.Millisecond
	cfg.VisibilityTimeout = time.Hour // "holder" keeps its entry
	cfg.BlockTimeout = 50 * time.Millisecond
	time.Sleep(60 * time.Millisecond) // let "gone" become idle: idle time is what is tested
	w := mustNew(t, cfg)
	running(t, w)
	testenv.Eventually(t, 5*time.Second, func() bool {
		cs, _ := e.rdb.XInfoConsumers(ctx, s, DefaultGroup).Result()
		for _, c := range cs {
			if c.Name == "gone" {
				return false
			}
		}
		return true
	}, "idle consumer not removed")
	cs, _ := e.rdb.XInfoConsumers(ctx, s, DefaultGroup).Result()
	found := false
	for _, c := range cs {
		found = found || c.Name == "holder"
	}
	if !found {
		t.Errorf("consumer with a pending entry was deleted: %+v", cs)
	}
}

// failLease is a go-redis hook that fails the lease extensions (the
// pipelined leaseScript) while on is set, as a Redis too slow to answer them
// in time would.
type failLease struct{ on atomic.Bool }

func (f *failLease) DialHook(next redis.DialHook) redis.DialHook { return next }
func (f *failLease) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (f *failLease) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if f.on.Load() {
			for _, c := range cmds {
				if a := c.Args(); len(a) > 1 && a[1] == leaseSource {
					err := errors.New("test: lease extension failed")
					for _, c := range cmds {
						c.SetErr(err)
					}
					return err
				}
			}
		}
		return next(ctx, cmds)
	}
}

// TestNoSelfReclaim: when a worker cannot extend its leases for longer than
// the visibility timeout, its own reclaim must not take back and run again
// the entry its handler is still running: the record runs once, and its
// delivery count is not raised.
func TestNoSelfReclaim(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 1)
	hook := &failLease{}
	e.rdb.AddHook(hook)
	var calls atomic.Int64
	started, release := make(chan struct{}, 2), make(chan struct{})
	cfg := e.config(func(ctx context.Context, m *Message) error {
		calls.Add(1)
		started <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	cfg.VisibilityTimeout = 300 * time.Millisecond
	cfg.ReclaimInterval = 20 * time.Millisecond
	w := mustNew(t, cfg)
	stop := running(t, w)
	<-started
	hook.on.Store(true)
	deadline := time.Now().Add(3 * cfg.VisibilityTimeout)
	for time.Now().Before(deadline) {
		if n := calls.Load(); n != 1 {
			t.Fatalf("handler calls = %d while the first still runs and its lease cannot be extended, want 1", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	hook.on.Store(false)
	ps, err := e.rdb.XPendingExt(context.Background(), &redis.XPendingExtArgs{Stream: s, Group: DefaultGroup, Start: "-", End: "+", Count: 10}).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Consumer != w.Consumer() || ps[0].RetryCount != 1 {
		t.Errorf("pending = %+v, want the entry under %s with delivery count 1", ps, w.Consumer())
	}
	close(release)
	testenv.Eventually(t, 5*time.Second, func() bool { return e.pending(t, s, DefaultGroup) == 0 }, "entry still pending")
	_ = stop()
	if n := calls.Load(); n != 1 {
		t.Errorf("handler calls = %d, want 1", n)
	}
	if st := w.Stats(); st.Reclaimed != 0 {
		t.Errorf("Stats.Reclaimed = %d, want 0 (nothing was abandoned)", st.Reclaimed)
	}
}

// TestShutdownTimeoutCancelledHandler: a handler cancelled at the end of the
// shutdown timeout is neither counted as failed nor dead-lettered (even on
// its last delivery): its entry stays pending for another worker, also once
// its goroutine is gone after Run returned. A handler that returns nil at
// the cancellation gets its ack sent before Run returns.
func TestShutdownTimeoutCancelledHandler(t *testing.T) {
	for _, tt := range []struct {
		name        string
		result      error
		wantPending int64
	}{
		{"killed", errors.New("signal: killed"), 1},
		{"finishes-at-cancel", nil, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			s := e.stream(t, "t", 0)
			e.add(t, s, 0, 1)
			started := make(chan struct{})
			cfg := e.config(func(ctx context.Context, m *Message) error {
				close(started)
				<-ctx.Done()
				return tt.result
			})
			cfg.MaxDeliveries = 1
			cfg.ShutdownTimeout = 200 * time.Millisecond
			cfg.AckInterval = time.Hour // only the shutdown flush sends the ack
			w := mustNew(t, cfg)
			stop := running(t, w)
			<-started
			if err := stop(); !errors.Is(err, ErrShutdownTimeout) {
				t.Fatalf("Run = %v, want %v", err, ErrShutdownTimeout)
			}
			w.handlers.Wait() // whatever the handler goroutine does after Run, it has done
			ctx := context.Background()
			if n, _ := e.rdb.XLen(ctx, s+":dlq").Result(); n != 0 {
				dl, _ := e.rdb.XRange(ctx, s+":dlq", "-", "+").Result()
				t.Errorf("dead letters = %d (%v), want 0", n, dl)
			}
			if n := e.pending(t, s, DefaultGroup); n != tt.wantPending {
				t.Errorf("pending = %d, want %d", n, tt.wantPending)
			}
			if st := w.Stats(); st.Failed != 0 || st.DeadLettered != 0 {
				t.Errorf("Stats: Failed %d, DeadLettered %d; want 0, 0", st.Failed, st.DeadLettered)
			}
		})
	}
}

// TestDeadLetterOnlyIfOwned: a worker dead-letters (and so acknowledges) an
// entry only while it is pending under its own consumer; one that another
// consumer reclaimed is left alone, pending under the new owner.
func TestDeadLetterOnlyIfOwned(t *testing.T) {
	for _, tt := range []struct {
		name        string
		reclaimedBy string // "" = still ours
		wantDLQ     int64
		wantPending int64
	}{
		{"owned", "", 1, 0},
		{"reclaimed-by-another", "other", 0, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			s := e.stream(t, "t", 0)
			e.add(t, s, 0, 1)
			ctx := context.Background()
			cfg := e.config(func(context.Context, *Message) error { return nil })
			cfg.Consumer = "me"
			w := mustNew(t, cfg)
			res, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "me", Streams: []string{s, ">"}, Count: 1}).Result()
			if err != nil || len(res) != 1 || len(res[0].Messages) != 1 {
				t.Fatalf("XREADGROUP = %v, %v", res, err)
			}
			xm := res[0].Messages[0]
			if tt.reclaimedBy != "" {
				if err := e.rdb.XClaim(ctx, &redis.XClaimArgs{Stream: s, Group: DefaultGroup, Consumer: tt.reclaimedBy, Messages: []string{xm.ID}}).Err(); err != nil {
					t.Fatal(err)
				}
			}
			m, err := newMessage(s, xm.ID, xm.Values, 1)
			if err != nil {
				t.Fatal(err)
			}
			m.held = w.hold(s, xm.ID)
			w.deadLetter(ctx, m, "max-deliveries", errors.New("test failure"))
			if st := w.Stats(); st.Held != 0 {
				t.Errorf("Stats.Held = %d after dead-lettering, want 0", st.Held)
			}
			if n, _ := e.rdb.XLen(ctx, s+":dlq").Result(); n != tt.wantDLQ {
				t.Errorf("dead letters = %d, want %d", n, tt.wantDLQ)
			}
			if n := e.pending(t, s, DefaultGroup); n != tt.wantPending {
				t.Errorf("pending = %d, want %d", n, tt.wantPending)
			}
		})
	}
}

// TestReclaimBudget: a worker whose handler slots are all taken by handlers
// that hang (nothing finished for a visibility timeout) reclaims nothing
// more (it would hold the entries leased, out of reach of idle workers): a
// second, idle worker gets every remaining entry of a dead consumer while
// the first hangs. (A worker that is busy but making progress does reclaim:
// TestReclaimUnderSaturation.)
func TestReclaimBudget(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 10)
	ctx := context.Background()
	if err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "dead", Streams: []string{s, ">"}, Count: 10}).Err(); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	defer close(release)
	var busy atomic.Int64
	cfg := e.config(func(ctx context.Context, m *Message) error {
		busy.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	cfg.Concurrency = 2
	cfg.VisibilityTimeout = 300 * time.Millisecond
	cfg.ReclaimInterval = 20 * time.Millisecond
	w1 := mustNew(t, cfg)
	running(t, w1)
	testenv.Eventually(t, 5*time.Second, func() bool { return busy.Load() == 2 }, "first worker runs %d handlers, want 2", busy.Load())
	held := func() int64 {
		p, err := e.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: s, Group: DefaultGroup, Start: "-", End: "+", Count: 100, Consumer: w1.Consumer()}).Result()
		if err != nil {
			t.Fatal(err)
		}
		return int64(len(p))
	}
	for deadline := time.Now().Add(10 * cfg.ReclaimInterval); time.Now().Before(deadline); {
		if n := held(); n != 2 {
			t.Fatalf("busy worker holds %d entries, want 2 (its running handlers)", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	got := newSeen()
	cfg2 := cfg
	cfg2.Handler = func(ctx context.Context, m *Message) error { got.add(m); return nil }
	running(t, mustNew(t, cfg2))
	testenv.Eventually(t, 5*time.Second, func() bool { return got.distinct() == 8 }, "idle worker handled %d of the 8 entries the busy one could not start", got.distinct())
}

// TestUnclaim: entries a stopping worker read or reclaimed but did not start
// are handed back: pending under it still (nothing is lost), but idle for
// the visibility timeout, so another worker's next XAUTOCLAIM takes them,
// with the delivery that never ran not counted.
func TestUnclaim(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 2)
	ctx := context.Background()
	cfg := e.config(func(context.Context, *Message) error { return nil })
	cfg.Consumer = "me"
	cfg.VisibilityTimeout = time.Minute
	w := mustNew(t, cfg)
	res, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "me", Streams: []string{s, ">"}, Count: 2}).Result()
	if err != nil {
		t.Fatal(err)
	}
	var msgs []*Message
	for _, xm := range res[0].Messages {
		he := w.hold(s, xm.ID)
		m, err := newMessage(s, xm.ID, xm.Values, 1)
		if err != nil {
			t.Fatal(err)
		}
		m.held = he
		msgs = append(msgs, m)
	}
	w.unclaim(msgs)
	if st := w.Stats(); st.Held != 0 {
		t.Errorf("Stats.Held = %d after unclaim, want 0", st.Held)
	}
	if n := e.pending(t, s, DefaultGroup); n != 2 {
		t.Errorf("pending = %d after unclaim, want 2", n)
	}
	claimed, _, err := e.rdb.XAutoClaimJustID(ctx, &redis.XAutoClaimArgs{Stream: s, Group: DefaultGroup, Consumer: "other",
		MinIdle: cfg.VisibilityTimeout, Start: "0-0", Count: 10}).Result()
	if err != nil || len(claimed) != 2 {
		t.Fatalf("XAUTOCLAIM MinIdle %v at once = %v, %v; want both entries", cfg.VisibilityTimeout, claimed, err)
	}
	ps, err := e.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: s, Group: DefaultGroup, Start: "-", End: "+", Count: 10}).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		// JUSTID counts no delivery on redis-server and one on miniredis.
		if p.Consumer != "other" || p.RetryCount > 1 {
			t.Errorf("pending %+v: want under other, delivery count at most 1", p)
		}
	}
}

// TestAckPermanentError: an acknowledgement that fails for good (the key is
// no stream any more) is dropped and its entry released, not retried for
// ever.
func TestAckPermanentError(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	key := e.prefix + ":{t:0}"
	if err := e.rdb.Set(ctx, key, "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.rdb.Del(context.Background(), key) })
	w := mustNew(t, e.config(func(context.Context, *Message) error { return nil }))
	w.acks.add(w.hold(key, "0-1"))
	_ = w.acks.flush(ctx)
	w.acks.mu.Lock()
	left := w.acks.n
	w.acks.mu.Unlock()
	if left != 0 {
		t.Errorf("%d acks queued again after WRONGTYPE, want 0", left)
	}
	if st := w.Stats(); st.Held != 0 {
		t.Errorf("Stats.Held = %d, want 0", st.Held)
	}
}

// TestLeaseLostOnlyWhenTaken: LeaseLost counts the entries another consumer
// really took, not the acknowledgements that land between the lease loop's
// snapshot of the held entries and its script. One worker, nobody stealing,
// leases extended every 30ms while thousands of acks flow: 0 lost. Then
// two held entries are taken by another consumer (one of them also
// acknowledged by it): 2 lost.
func TestLeaseLostOnlyWhenTaken(t *testing.T) {
	e := newEnv(t)
	var streams []string
	for p := range 4 {
		s := e.stream(t, "t", p)
		e.add(t, s, 0, 1500)
		streams = append(streams, s)
	}
	cfg := e.config(func(ctx context.Context, m *Message) error { return nil })
	cfg.VisibilityTimeout = 90 * time.Millisecond // a lease extension every 30ms
	cfg.BlockTimeout = 30 * time.Millisecond
	cfg.AckInterval = 2 * time.Millisecond
	cfg.Concurrency = 32
	w := mustNew(t, cfg)
	stop := running(t, w)
	testenv.Eventually(t, 60*time.Second, func() bool { return w.Stats().Acked == 6000 }, "acked %d of 6000", w.Stats().Acked)
	if st := w.Stats(); st.LeaseLost != 0 {
		t.Errorf("no-steal run: Stats.LeaseLost = %d, want 0 (stats %+v)", st.LeaseLost, st)
	} else {
		t.Logf("no-steal run: %+v", st)
	}
	_ = stop()

	// A real steal.
	s := streams[0]
	e.add(t, s, 1500, 2)
	started := make(chan string, 2)
	release := make(chan struct{})
	cfg.Handler = func(ctx context.Context, m *Message) error {
		started <- m.ID
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}
	cfg.VisibilityTimeout = 300 * time.Millisecond
	cfg.ReclaimInterval = time.Hour
	w = mustNew(t, cfg)
	running(t, w)
	ids := []string{<-started, <-started}
	ctx := context.Background()
	if err := e.rdb.XClaim(ctx, &redis.XClaimArgs{Stream: s, Group: DefaultGroup, Consumer: "thief", Messages: ids}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.XAck(ctx, s, DefaultGroup, ids[1]).Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return w.Stats().LeaseLost == 2 }, "LeaseLost = %d, want 2", w.Stats().LeaseLost)
	close(release)
}
