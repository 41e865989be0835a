package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// perStream counts handler calls and running handlers per stream, and the
// most handlers a stream ran at once.
type perStream struct {
	mu      sync.Mutex
	done    map[string]int
	running map[string]int
	peak    map[string]int
}

func newPerStream() *perStream {
	return &perStream{done: map[string]int{}, running: map[string]int{}, peak: map[string]int{}}
}

// enter records a handler start on s and returns its leave.
func (p *perStream) enter(s string) (leave func()) {
	p.mu.Lock()
	p.running[s]++
	p.peak[s] = max(p.peak[s], p.running[s])
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		p.running[s]--
		p.done[s]++
		p.mu.Unlock()
	}
}

func (p *perStream) get(s string) (done, running, peak int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done[s], p.running[s], p.peak[s]
}

// TestFairnessByHandlerTime: a partition whose handler takes 500 ms beside
// one whose handler takes 1 ms. Slots are shared by handler time: the slow
// one never holds more than its share (half the slots, and one slot once
// its handler time is known: TestSchedSlowStreamShare) while the fast one
// has entries, so the fast one handles hundreds of records for each slow
// one (ideally 500). When slots were shared by reads, the slow partition
// took nearly every slot and the fast one handled about as many records as
// the slow one.
func TestFairnessByHandlerTime(t *testing.T) {
	e := newEnv(t)
	slow := e.stream(t, "t", 0)
	fast := e.stream(t, "t", 1)
	const fastN = 3000
	e.add(t, slow, 0, 200)
	e.add(t, fast, 0, fastN)
	ps := newPerStream()
	cfg := e.config(func(ctx context.Context, m *Message) error {
		defer ps.enter(m.Stream)()
		d := time.Millisecond
		if m.Stream == slow {
			d = 500 * time.Millisecond
		}
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
		return nil
	})
	cfg.Concurrency = 8
	cfg.VisibilityTimeout = 6 * time.Second
	cfg.ShutdownTimeout = 2 * time.Second
	w := mustNew(t, cfg)
	stop := running(t, w)
	// The slow partition's peak is looked at only while the fast one has
	// entries left.
	// Once the slow one is timed (its first runs, started before, have
	// ended), it runs one handler at a time: its share shrinks with how
	// much slower it is (sampled).
	var slowPeakWhileFast, slowRunningTimed int
	testenv.Eventually(t, 60*time.Second, func() bool {
		fd, _, _ := ps.get(fast)
		sd, sr, sp := ps.get(slow)
		if fd < fastN-2*cfg.Concurrency {
			slowPeakWhileFast = sp
			if sd >= cfg.Concurrency {
				slowRunningTimed = max(slowRunningTimed, sr)
			}
		}
		return fd == fastN
	}, "fast partition not done")
	if slowRunningTimed > 1 {
		t.Errorf("the 500ms partition ran %d handlers at once, once timed, while the fast one had entries; want 1", slowRunningTimed)
	}
	sd, _, _ := ps.get(slow)
	_ = stop()
	t.Logf("fast partition: %d records done while the slow one did %d (ratio %.0f, ideal 500); slow partition held at most %d of %d slots while the fast one had entries",
		fastN, sd, float64(fastN)/float64(max(sd, 1)), slowPeakWhileFast, cfg.Concurrency)
	if share := cfg.Concurrency / 2; slowPeakWhileFast > share {
		t.Errorf("the 500ms partition ran %d handlers at once while the fast one had entries; want at most its share %d", slowPeakWhileFast, share)
	}
	if sd == 0 || fastN/sd < 20 {
		t.Errorf("fast partition did %d records while the slow one did %d; want at least 20 times as many", fastN, sd)
	}
}

// TestManyStreamsShare: with more streams than slots, a slow stream among
// fast ones holds one slot (its share), and the fast ones share the rest
// by handler time: each fast stream does many times what the slow one does.
func TestManyStreamsShare(t *testing.T) {
	e := newEnv(t)
	var streams []string
	for p := range 10 {
		s := e.stream(t, "t", p)
		e.add(t, s, 0, 300)
		streams = append(streams, s)
	}
	slow := streams[0]
	ps := newPerStream()
	cfg := e.config(func(ctx context.Context, m *Message) error {
		defer ps.enter(m.Stream)()
		d := time.Millisecond
		if m.Stream == slow {
			d = 200 * time.Millisecond
		}
		time.Sleep(d)
		return nil
	})
	cfg.Concurrency = 4
	w := mustNew(t, cfg)
	stop := running(t, w)
	var peak int
	testenv.Eventually(t, 60*time.Second, func() bool {
		_, _, p := ps.get(slow)
		for _, s := range streams[1:] {
			if d, _, _ := ps.get(s); d < 300-2*cfg.Concurrency {
				peak = p // while every fast stream has entries left
				return false
			}
		}
		return true
	}, "fast streams not done")
	sd, _, _ := ps.get(slow)
	_ = stop()
	t.Logf("9 fast streams did 300 records each while the slow one did %d; it held at most %d of %d slots", sd, peak, cfg.Concurrency)
	if peak > 1 {
		t.Errorf("slow stream ran %d handlers at once; want 1 (its share of 4 slots among 10 streams)", peak)
	}
	if sd > 60 {
		t.Errorf("slow stream did %d records while each fast one did 300; want far fewer (fair by handler time)", sd)
	}
}

// TestFailingPartitionGivesBackSlots: a partition whose handler fails
// waits for its retries outside the handler slots: while more of its
// entries wait for a retry than there are slots, another partition is
// handled to the end. Its waiting entries stay leased and counted
// (Stats.Waiting, Held), and it reads no more once Concurrency of them
// wait (what was queued or running then may still join them).
func TestFailingPartitionGivesBackSlots(t *testing.T) {
	e := newEnv(t)
	failing := e.stream(t, "t", 0)
	ok := e.stream(t, "t", 1)
	e.add(t, failing, 0, 100)
	cfg := e.config(nil)
	cfg.Concurrency = 4
	cfg.ReadAhead = 4
	cfg.BackoffMin = 30 * time.Second // longer than the test: retries wait all along
	cfg.BackoffMax = 30 * time.Second
	cfg.MaxDeliveries = 10
	cfg.VisibilityTimeout = 3 * time.Second
	cfg.ShutdownTimeout = time.Second
	ps := newPerStream()
	cfg.Handler = func(ctx context.Context, m *Message) error {
		defer ps.enter(m.Stream)()
		if m.Stream == failing {
			return errors.New("downstream of partition 0 is down")
		}
		return nil
	}
	w := mustNew(t, cfg)
	stop := running(t, w)
	testenv.Eventually(t, 10*time.Second, func() bool { return w.Stats().Waiting >= int64(cfg.Concurrency) }, "waiting %d", w.Stats().Waiting)
	e.add(t, ok, 0, 500)
	testenv.Eventually(t, 20*time.Second, func() bool { d, _, _ := ps.get(ok); return d == 500 },
		"the healthy partition is stuck behind the failing one's backoffs: %d of 500 done", func() int { d, _, _ := ps.get(ok); return d }())
	st := w.Stats()
	fd, _, _ := ps.get(failing)
	t.Logf("healthy partition done while the failing one had %d entries waiting for a retry (%d attempts); stats %+v", st.Waiting, fd, st)
	if st.Waiting < int64(cfg.Concurrency) || st.Held < st.Waiting {
		t.Errorf("Stats = %+v: want at least %d waiting, all of them held", st, cfg.Concurrency)
	}
	if lim := int64(2*cfg.Concurrency + cfg.ReadAhead); st.Waiting+st.Queued > lim {
		t.Errorf("the failing partition has %d entries waiting and %d queued; want at most %d in all", st.Waiting, st.Queued, lim)
	}
	// InFlight counts both partitions (the healthy one's last entries may
	// be between their handler and their XACK), so it bounds from above.
	if n := e.pending(t, failing, DefaultGroup); n < st.Waiting+st.Queued || n > st.Waiting+st.Queued+st.InFlight {
		t.Errorf("failing partition: %d pending in Redis, the worker holds %d waiting, %d queued, %d running (both partitions)", n, st.Waiting, st.Queued, st.InFlight)
	}
	_ = stop()
	if n := e.pending(t, failing, DefaultGroup); n != st.Waiting+st.Queued {
		t.Errorf("after shutdown: %d pending, want the %d waiting and queued entries left for another worker", n, st.Waiting+st.Queued)
	}
}

// TestRetryAfterPausesOnlyItsStream: a handler that asks to back off
// (RetryAfter) on one partition pauses that partition only: the other is
// handled to the end meanwhile, and the paused one's entry is run again
// after the wait without a delivery counted.
func TestRetryAfterPausesOnlyItsStream(t *testing.T) {
	e := newEnv(t)
	busy := e.stream(t, "t", 0)
	other := e.stream(t, "t", 1)
	e.add(t, busy, 0, 1)
	var busyCalls atomic.Int64
	ps := newPerStream()
	cfg := e.config(func(ctx context.Context, m *Message) error {
		defer ps.enter(m.Stream)()
		if m.Stream == busy && busyCalls.Add(1) == 1 {
			return RetryAfter(2*time.Second, errors.New("429"))
		}
		return nil
	})
	cfg.MaxDeliveries = 1
	w := mustNew(t, cfg)
	running(t, w)
	testenv.Eventually(t, 5*time.Second, func() bool { return w.Stats().Backoffs == 1 }, "no backoff")
	e.add(t, busy, 1, 2)
	e.add(t, other, 0, 200)
	testenv.Eventually(t, 10*time.Second, func() bool { d, _, _ := ps.get(other); return d == 200 }, "other partition not done")
	bd, _, _ := ps.get(busy)
	if bd != 1 {
		t.Errorf("the paused partition ran %d handlers while paused; want 1 (the one that asked)", bd)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { d, _, _ := ps.get(busy); return d == 4 }, "paused partition not resumed")
	st := w.Stats()
	t.Logf("stats %+v", st)
	if st.DeadLettered != 0 || st.Failed != 0 {
		t.Errorf("Stats = %+v: want nothing failed or dead-lettered", st)
	}
}

// commandCounter counts the commands a client sends, by name, and the keys
// named in XREADGROUP calls. It can hold back chosen commands until
// released.
type commandCounter struct {
	mu       sync.Mutex
	n        map[string]int
	readKeys int
	hold     func(c redis.Cmder) bool
	release  chan struct{}
}

func newCommandCounter() *commandCounter {
	return &commandCounter{n: map[string]int{}, release: make(chan struct{})}
}

func (c *commandCounter) count(cmds ...redis.Cmder) (held bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cmd := range cmds {
		name := strings.ToLower(cmd.Name())
		c.n[name]++
		if name == "xreadgroup" {
			for i, a := range cmd.Args() {
				if s, ok := a.(string); ok && strings.EqualFold(s, "streams") {
					c.readKeys += (len(cmd.Args()) - i - 1) / 2
				}
			}
		}
		if c.hold != nil && c.hold(cmd) {
			held = true
		}
	}
	return held
}

func (c *commandCounter) get(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[name]
}

func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if c.count(cmd) {
			<-c.release
		}
		return next(ctx, cmd)
	}
}
func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if c.count(cmds...) {
			<-c.release
		}
		return next(ctx, cmds)
	}
}

// TestHotPartitionAmongMany: 1,000 partition streams, all records in one.
// Reading costs about what it costs with one stream: a handful of
// XREADGROUPs per hundred records, not one per idle stream per round. The
// idle streams are probed together (one XREADGROUP naming them all), at
// most every probeInterval.
func TestHotPartitionAmongMany(t *testing.T) {
	const records = 3000
	run := func(t *testing.T, streams int) (rate float64, reads, keys int) {
		e := newEnv(t)
		ctx := context.Background()
		var hot string
		p := e.rdb.Pipeline()
		for i := range streams {
			s := wire.StreamKey(e.prefix, "t", i)
			if i == 0 {
				hot = s
			}
			p.XGroupCreateMkStream(ctx, s, DefaultGroup, "0")
			p.SAdd(ctx, wire.RegistryKey(e.prefix), s)
		}
		if _, err := p.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			p := e.rdb.Pipeline()
			for i := range streams {
				p.Del(context.Background(), wire.StreamKey(e.prefix, "t", i))
			}
			p.Del(context.Background(), wire.RegistryKey(e.prefix))
			_, _ = p.Exec(context.Background())
		})
		var done atomic.Int64
		cfg := e.config(func(ctx context.Context, m *Message) error {
			time.Sleep(time.Millisecond)
			done.Add(1)
			return nil
		})
		cfg.Concurrency = 32
		cfg.DiscoveryInterval = time.Second
		cfg.VisibilityTimeout = 6 * time.Second
		cfg.BlockTimeout = time.Second
		cnt := newCommandCounter()
		w := mustNew(t, cfg)
		w.rdb = redis.NewClient(e.rdb.Options())
		t.Cleanup(func() { w.rdb.Close() })
		w.rdb.AddHook(cnt)
		stop := running(t, w)
		testenv.Eventually(t, 10*time.Second, func() bool { return w.Stats().Streams == int64(streams) }, "streams not discovered")
		e.add(t, hot, 0, records)
		before := cnt.get("xreadgroup")
		cnt.mu.Lock()
		beforeKeys := cnt.readKeys
		cnt.mu.Unlock()
		start := time.Now()
		testenv.Eventually(t, 120*time.Second, func() bool { return done.Load() == records }, "handled %d of %d", done.Load(), records)
		took := time.Since(start)
		_ = stop()
		cnt.mu.Lock()
		keys = cnt.readKeys - beforeKeys
		cnt.mu.Unlock()
		return records / took.Seconds(), cnt.get("xreadgroup") - before, keys
	}
	rate1, reads1, keys1 := run(t, 1)
	rate1000, reads1000, keys1000 := run(t, 1000)
	t.Logf("1 stream: %.0f records/s, %d XREADGROUPs naming %d keys; 1,000 streams, all records in one: %.0f records/s (%.2f of 1 stream), %d XREADGROUPs naming %d keys",
		rate1, reads1, keys1, rate1000, rate1000/rate1, reads1000, keys1000)
	if reads1000 > records/10 {
		t.Errorf("%d XREADGROUPs for %d records on the hot stream among 1,000; want at most %d", reads1000, records, records/10)
	}
}

// TestSlowHousekeepingDoesNotStallReads: discovery, the reclaim scan and
// the idle-consumer clean-up run beside the reads: while each of them hangs
// (their Redis commands held back), records keep being read and handled.
func TestSlowHousekeepingDoesNotStallReads(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	var done atomic.Int64
	cfg := e.config(func(ctx context.Context, m *Message) error { done.Add(1); return nil })
	cfg.ReclaimInterval = 20 * time.Millisecond
	cfg.DiscoveryInterval = 20 * time.Millisecond
	cfg.ConsumerIdleTimeout = time.Millisecond
	cnt := newCommandCounter()
	var heldBack atomic.Int64
	cnt.hold = func(c redis.Cmder) bool {
		if slices.Contains(c.Args(), any(probeKey(e.prefix))) {
			return false // Run's start-up check, before any read: not housekeeping
		}
		switch strings.ToLower(c.Name()) {
		case "xinfo", "xpending", "smembers":
			heldBack.Add(1)
			return true
		}
		return false
	}
	w := mustNew(t, cfg)
	w.rdb = redis.NewClient(e.rdb.Options())
	t.Cleanup(func() { w.rdb.Close() })
	w.sched.setStreams([]string{s}) // the first discovery will hang
	w.rdb.AddHook(cnt)
	running(t, w)
	defer close(cnt.release)
	e.add(t, s, 0, 500)
	testenv.Eventually(t, 10*time.Second, func() bool { return done.Load() == 500 }, "handled %d of 500 while housekeeping hangs", done.Load())
	t.Logf("500 records handled while %d housekeeping commands hung (XINFO, XPENDING, SMEMBERS)", heldBack.Load())
	if heldBack.Load() == 0 {
		t.Error("no housekeeping command was held back; the test tests nothing")
	}
}

// TestReclaimUnderSaturation: a consumer that died holding entries has them
// reclaimed after the visibility timeout even though every live worker is
// saturated by a backlog (all slots busy, read-ahead full): the reclaim
// happens long before the backlog is worked off, and every record is
// handled once.
func TestReclaimUnderSaturation(t *testing.T) {
	e := newEnv(t)
	// "dead" reads 10 entries of each stream and is SIGKILLed.
	_, deadPending := deadConsumer(t, e, 10)
	died := time.Now()
	got := newSeen()
	cfg := e.config(func(ctx context.Context, m *Message) error {
		got.add(m)
		time.Sleep(50 * time.Millisecond)
		return nil
	})
	cfg.Concurrency = 4
	cfg.VisibilityTimeout = 500 * time.Millisecond
	cfg.ReclaimInterval = 100 * time.Millisecond
	cfg.Logger = testLogger(t)
	var ws []*Worker
	for range 2 {
		w := mustNew(t, cfg)
		running(t, w)
		ws = append(ws, w)
	}
	var saturated bool
	testenv.Eventually(t, 30*time.Second, func() bool {
		sat := true
		for _, w := range ws {
			st := w.Stats()
			sat = sat && st.InFlight == int64(cfg.Concurrency)
		}
		saturated = saturated || sat
		return deadPending() == 0
	}, "the dead consumer still holds %d entries", func() any { return deadPending() })
	took := time.Since(died)
	left := 900 - got.distinct()
	t.Logf("dead consumer's 30 entries reclaimed %v after it died (visibility timeout %v, reclaim interval %v) with %d records of the backlog still to do; workers saw saturated: %v",
		took, cfg.VisibilityTimeout, cfg.ReclaimInterval, left, saturated)
	if !saturated {
		t.Error("the workers were never seen with every slot busy; the test tests nothing")
	}
	if bound := cfg.VisibilityTimeout + cfg.ReclaimInterval + time.Second; took > bound {
		t.Errorf("reclaimed %v after the consumer died; want within visibility timeout + reclaim interval + 1s = %v", took, bound)
	}
	if left < 300 {
		t.Errorf("reclaimed only when %d records of 900 were left: the reclaim waited for the backlog", left)
	}
	testenv.Eventually(t, 60*time.Second, func() bool { return got.distinct() == 900 }, "handled %d of 900", got.distinct())
	reclaimed := int64(0)
	for _, w := range ws {
		reclaimed += w.Stats().Reclaimed
	}
	// More than 30 only if a live worker's lease lapsed (a machine too
	// loaded to extend it within the visibility timeout); each such
	// entry may run twice, nothing else may.
	if reclaimed < 30 || int64(got.total()-900) > reclaimed-30 {
		t.Errorf("reclaimed %d, handler calls %d for 900 records; want 30 reclaimed, and a duplicate only for each entry beyond 30", reclaimed, got.total())
	}
}

func slices3(s []string) []string { return append([]string(nil), s...) }

// deadConsumer fills 3 streams with 300 entries each and has the consumer
// "dead" read perStream of each (then it is gone, as if SIGKILLed). It
// returns the streams and a count of the entries still pending under it.
func deadConsumer(t *testing.T, e *env, perStream int64) ([]string, func() int) {
	t.Helper()
	var streams []string
	for p := range 3 {
		s := e.stream(t, "t", p)
		e.add(t, s, 0, 300)
		streams = append(streams, s)
	}
	ctx := context.Background()
	res, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "dead",
		Streams: append(slices3(streams), ">", ">", ">"), Count: perStream}).Result()
	if err != nil || len(res) != 3 {
		t.Fatalf("XREADGROUP = %d streams, %v", len(res), err)
	}
	return streams, func() int {
		n := 0
		for _, s := range streams {
			ps, err := e.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: s, Group: DefaultGroup, Start: "-", End: "+", Count: 1000, Consumer: "dead"}).Result()
			if err != nil {
				t.Fatal(err)
			}
			n += len(ps)
		}
		return n
	}
}

// TestShutdownHandsBackQueued: entries read ahead and not started when the
// worker stops are handed back at once (idle for the visibility timeout,
// their unrun delivery not counted): another worker takes them at its first
// reclaim, without waiting a visibility timeout, and runs each once with
// delivery count 1.
func TestShutdownHandsBackQueued(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 20)
	got := newSeen()
	var mu sync.Mutex
	var deliveries []int64
	started := make(chan struct{}, 1)
	cfg := e.config(func(ctx context.Context, m *Message) error {
		got.add(m)
		mu.Lock()
		deliveries = append(deliveries, m.Deliveries)
		mu.Unlock()
		select {
		case started <- struct{}{}:
		default:
		}
		time.Sleep(100 * time.Millisecond)
		return nil
	})
	cfg.Concurrency = 1
	cfg.ReadAhead = 8
	cfg.VisibilityTimeout = time.Hour // nothing would be reclaimed unless handed back
	cfg.ReclaimInterval = 50 * time.Millisecond
	w1 := mustNew(t, cfg)
	stop := running(t, w1)
	<-started
	testenv.Eventually(t, 5*time.Second, func() bool { return w1.Stats().Queued > 0 }, "nothing read ahead")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	first := got.distinct()
	w2 := mustNew(t, cfg)
	running(t, w2)
	testenv.Eventually(t, 20*time.Second, func() bool { return got.distinct() == 20 }, "handled %d of 20", got.distinct())
	mu.Lock()
	defer mu.Unlock()
	t.Logf("first worker handled %d, second %d (reclaimed %d); deliveries %v", first, 20-first, w2.Stats().Reclaimed, deliveries)
	if w2.Stats().Reclaimed == 0 {
		t.Error("the second worker reclaimed nothing: the first did not hand back its read-ahead")
	}
	for i, d := range deliveries {
		if d != 1 {
			t.Errorf("handler call %d saw delivery %d, want 1 (a handed-back entry's unrun delivery is not counted)", i, d)
		}
	}
	if got.total() != 20 {
		t.Errorf("handler calls = %d, want 20", got.total())
	}
}

// TestReadAheadBounded: with a large backlog and slow handlers, the entries
// a worker holds stay bounded: Concurrency running plus the read-ahead.
func TestReadAheadBounded(t *testing.T) {
	e := newEnv(t)
	var streams []string
	for p := range 4 {
		s := e.stream(t, "t", p)
		e.add(t, s, 0, 500)
		streams = append(streams, s)
	}
	var done atomic.Int64
	cfg := e.config(func(ctx context.Context, m *Message) error {
		time.Sleep(5 * time.Millisecond)
		done.Add(1)
		return nil
	})
	cfg.Concurrency = 8
	cfg.ReadAhead = 8
	w := mustNew(t, cfg)
	running(t, w)
	var peakHeld, peakQueued int64
	testenv.Eventually(t, 60*time.Second, func() bool {
		st := w.Stats()
		peakHeld, peakQueued = max(peakHeld, st.Held), max(peakQueued, st.Queued)
		pend := int64(0)
		for _, s := range streams {
			pend += e.pending(t, s, DefaultGroup)
		}
		peakHeld = max(peakHeld, pend)
		return done.Load() == 2000
	}, "handled %d of 2000", done.Load())
	t.Logf("peak: %d held (pending in Redis or in the worker), %d queued; concurrency %d, read-ahead %d", peakHeld, peakQueued, cfg.Concurrency, cfg.ReadAhead)
	// acks are batched: allow one AckBatch of acknowledged-not-yet-sent
	if lim := int64(cfg.Concurrency + cfg.ReadAhead + DefaultAckBatch); peakHeld > lim {
		t.Errorf("held %d entries at a time, want at most %d", peakHeld, lim)
	}
	if peakQueued > int64(cfg.ReadAhead) {
		t.Errorf("queued %d entries at a time, want at most the read-ahead %d", peakQueued, cfg.ReadAhead)
	}
}

var _ = fmt.Sprint

// TestShutdownDuringRetryWait: entries waiting for a retry when the worker
// stops stay pending with the right delivery count for the next worker: a
// back-off (RetryAfter) counted no delivery, so the next run is delivery 1,
// handed back at once; a failure counted one, so the next run is delivery 2,
// after the visibility timeout.
func TestShutdownDuringRetryWait(t *testing.T) {
	e := newEnv(t)
	backs, fails := e.stream(t, "t", 0), e.stream(t, "t", 1) // a back-off pauses its stream: two streams
	e.add(t, backs, 0, 1)
	e.add(t, fails, 1, 1)
	cfg := e.config(func(ctx context.Context, m *Message) error {
		if m.Stream == backs {
			return RetryAfter(time.Minute, errors.New("busy"))
		}
		return errors.New("failed")
	})
	cfg.BackoffMin, cfg.BackoffMax = time.Minute, time.Minute
	cfg.VisibilityTimeout = time.Second
	cfg.ReclaimInterval = 50 * time.Millisecond
	cfg.Logger = testLogger(t)
	w1 := mustNew(t, cfg)
	stop := running(t, w1)
	testenv.Eventually(t, 5*time.Second, func() bool { return w1.Stats().Waiting == 2 }, "not both entries waiting for a retry")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[int64]int64{}
	cfg.Handler = func(ctx context.Context, m *Message) error {
		mu.Lock()
		seen[m.Offset] = m.Deliveries
		mu.Unlock()
		return nil
	}
	w2 := mustNew(t, cfg)
	running(t, w2)
	testenv.Eventually(t, 10*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 2 }, "second worker handled %v", seen)
	mu.Lock()
	defer mu.Unlock()
	t.Logf("deliveries seen by the second worker: %v", seen)
	if seen[0] != 1 || seen[1] != 2 {
		t.Errorf("deliveries = %v; want offset 0 (backed off, no delivery counted) at 1 and offset 1 (failed once) at 2", seen)
	}
}

// TestReclaimBurst: a dead consumer that held many more entries than the
// live workers' reclaim budget (concurrency beyond the read-ahead) has all
// of them taken over at the first reclaim round that finds them due, in
// rounds that follow each other as long as they use the whole budget — not
// a budget's worth per reclaim interval (120 entries at 8 a round, 3 s
// apart, took 45 s).
func TestReclaimBurst(t *testing.T) {
	e := newEnv(t)
	_, deadPending := deadConsumer(t, e, 40)
	died := time.Now()
	got := newSeen()
	cfg := e.config(func(ctx context.Context, m *Message) error {
		got.add(m)
		time.Sleep(2 * time.Millisecond)
		return nil
	})
	cfg.Concurrency = 4
	cfg.VisibilityTimeout = 300 * time.Millisecond
	cfg.ReclaimInterval = 3 * time.Second
	cfg.Logger = testLogger(t)
	var ws []*Worker
	for range 2 {
		w := mustNew(t, cfg)
		running(t, w)
		ws = append(ws, w)
	}
	// the first round is one reclaim interval after the start, when every
	// entry of the dead consumer is long due; a second comes 3 s later
	bound := cfg.ReclaimInterval + cfg.ReclaimInterval/2
	left := deadPending()
	for ; left > 0 && time.Since(died) < 2*bound; left = deadPending() {
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(died)
	if left > 0 || took > bound {
		t.Fatalf("after %v the dead consumer still holds %d of 120 entries; want none after the first reclaim round's burst (%v)", took, left, bound)
	}
	t.Logf("120 entries of a dead consumer reclaimed %v after the workers started (reclaim interval %v, budget %d a round a worker)", took, cfg.ReclaimInterval, 2*cfg.Concurrency)
	testenv.Eventually(t, 60*time.Second, func() bool { return got.distinct() == 900 }, "handled %d of 900", got.distinct())
}
