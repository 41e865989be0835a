package worker

// Review of the sched branch: tests that try to break the scheduler. Each
// one names what it expects to hold; a failure is a finding.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// TestBreakVtimeStaleAfterIdle: a stream that ran alone for a while carries
// the handler time it was charged. When the worker goes idle (no contender)
// and other streams join first, they keep their own, lower, virtual time
// (update lifts a new contender only to the least vtime of the *current*
// contenders, and there are none), and the old stream, joining after them,
// is never lifted down. With more streams than slots (share 1), pick then
// prefers every other under-share stream with queued entries: the old
// stream gets nothing until the others have been charged as much handler
// time as it ran alone, however long that was.
func TestBreakVtimeStaleAfterIdle(t *testing.T) {
	e := newEnv(t)
	a := e.stream(t, "t", 0)
	var bs []string
	for p := 1; p <= 5; p++ {
		bs = append(bs, e.stream(t, "t", p))
	}
	ps := newPerStream()
	cfg := e.config(func(ctx context.Context, m *Message) error {
		defer ps.enter(m.Stream)()
		time.Sleep(3 * time.Millisecond)
		return nil
	})
	cfg.Concurrency = 2
	cfg.ReadAhead = 64 // every stream keeps entries queued
	cfg.VisibilityTimeout = 10 * time.Second
	w := mustNew(t, cfg)
	running(t, w)

	// Phase 1: a runs alone (800 × 3 ms = 2.4 s of handler time charged).
	e.add(t, a, 0, 800)
	testenv.Eventually(t, 30*time.Second, func() bool { d, _, _ := ps.get(a); return d == 800 }, "phase 1 not done")
	// The worker goes idle: a's next read finds nothing, a leaves the contenders.
	testenv.Eventually(t, 5*time.Second, func() bool {
		st := w.Stats()
		return st.InFlight == 0 && st.Queued == 0
	}, "not idle")
	time.Sleep(500 * time.Millisecond)

	// Phase 2: five other streams get a backlog (5 × 300 × 3 ms = 4.5 s of
	// handler time, 0.9 s each), then a gets 50 more.
	for _, b := range bs {
		e.add(t, b, 0, 300)
	}
	testenv.Eventually(t, 5*time.Second, func() bool {
		for _, b := range bs {
			if d, _, _ := ps.get(b); d == 0 {
				return false
			}
		}
		return true
	}, "the other streams did not start")
	e.add(t, a, 800, 50)
	// While the others have more than half their backlog left, a (one
	// contender of six, 50 entries) should have had about 1/6 of the slots:
	// with 750 of 1500 done by the others, a's 50 would be done. Ask for 10.
	var aDone, bDone int
	testenv.Eventually(t, 60*time.Second, func() bool {
		d, _, _ := ps.get(a)
		aDone = d - 800
		bDone = 0
		for _, b := range bs {
			x, _, _ := ps.get(b)
			bDone += x
		}
		return bDone >= 750 || aDone >= 50
	}, "nothing moved")
	t.Logf("when the five other streams had done %d of 1500, the stream that ran alone before had done %d of 50", bDone, aDone)
	if aDone < 10 {
		t.Errorf("stream starved: %d of its 50 entries handled while five others handled %d (fair: ~1/6 of the slots); its virtual time from running alone was never brought down", aDone, bDone)
	}
}

// TestBreakDoubleAfterLeaseLostThenReclaimedBack: an entry waiting for a
// retry (in the timer heap) is taken by another consumer (our lease lapsed;
// here an XCLAIM), the lease loop notices (LeaseLost, released), the thief
// dies, and our reclaim takes the entry back: a second task for the same
// entry. The old task is still in the timer heap; Worker.holds only asks
// whether (stream, id) is held, which it is again, so when its timer fires
// it runs too: the same entry twice at once in one worker.
func TestBreakDoubleAfterLeaseLostThenReclaimedBack(t *testing.T) {
	e := newEnv(t)
	if e.mini {
		t.Skip("needs redis-server (XCLAIM IDLE semantics)")
	}
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 1)
	var calls, inRun, peak atomic.Int64
	cfg := e.config(func(ctx context.Context, m *Message) error {
		n := calls.Add(1)
		r := inRun.Add(1)
		defer inRun.Add(-1)
		for {
			p := peak.Load()
			if r <= p || peak.CompareAndSwap(p, r) {
				break
			}
		}
		if n == 1 {
			return errors.New("first delivery fails") // retried in 3 s from the timer heap
		}
		time.Sleep(4 * time.Second)
		return nil
	})
	cfg.BackoffMin, cfg.BackoffMax = 3*time.Second, 3*time.Second
	cfg.VisibilityTimeout = 600 * time.Millisecond
	cfg.ReclaimInterval = 100 * time.Millisecond
	cfg.ShutdownTimeout = 10 * time.Second
	w := mustNew(t, cfg)
	running(t, w)
	testenv.Eventually(t, 5*time.Second, func() bool { return w.Stats().Waiting == 1 }, "entry not waiting for its retry")
	ctx := context.Background()
	id := "0-1"
	// Another consumer takes it (what a reclaim does once our lease lapsed).
	if err := e.rdb.XClaimJustID(ctx, &redis.XClaimArgs{Stream: s, Group: DefaultGroup, Consumer: "thief", MinIdle: 0, Messages: []string{id}}).Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return w.Stats().LeaseLost == 1 }, "lease loss not seen")
	// The thief dies: after the visibility timeout our reclaim takes it back.
	testenv.Eventually(t, 5*time.Second, func() bool { return w.Stats().Reclaimed == 1 }, "not reclaimed back")
	// Wait past the old task's retry time while the reclaimed run is going.
	time.Sleep(3500 * time.Millisecond)
	t.Logf("handler calls %d, peak concurrent runs of the one entry %d; stats %+v", calls.Load(), peak.Load(), w.Stats())
	if peak.Load() > 1 {
		t.Errorf("the same entry ran %d times at once in one worker: the stale retry task passed holds() after the entry was reclaimed back", peak.Load())
	}
}

var _ sync.Mutex

// TestBreakProbeIgnoresReadAhead: the probe of idle streams reads COUNT 1
// from every idle stream, whatever the read-ahead budget: with 300 streams
// (all idle at start) a worker with Concurrency 2 and ReadAhead 2 queues
// about 300 entries at once. Handlers at 20 ms need 3 s for them, more than
// the visibility timeout: the queued ones go stale and are handed back,
// and — not held any more — this same worker reclaims them (self-reclaim
// churn), with no other worker around. The reclaim budget
// (ReadAhead+Concurrency-queued) is 0 meanwhile: a dead worker's entries
// would wait.
func TestBreakProbeIgnoresReadAhead(t *testing.T) {
	e := newEnv(t)
	var streams []string
	for p := range 300 {
		s := e.stream(t, "t", p)
		e.add(t, s, 0, 2)
		streams = append(streams, s)
	}
	// a dead consumer holds 5 entries of one more stream
	deadS := e.stream(t, "t", 300)
	e.add(t, deadS, 0, 5)
	if err := e.rdb.XReadGroup(context.Background(), &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "dead", Streams: []string{deadS, ">"}, Count: 5}).Err(); err != nil {
		t.Fatal(err)
	}
	died := time.Now()
	got := newSeen()
	cfg := e.config(func(ctx context.Context, m *Message) error {
		got.add(m)
		time.Sleep(20 * time.Millisecond)
		return nil
	})
	cfg.Concurrency = 2
	cfg.ReadAhead = 2
	// 2 s: a queued entry starts within VisibilityTimeout/2 while slots
	// turn over (maxAge); a margin for a loaded machine (-race, CI) before
	// takeStale hands it back.
	cfg.VisibilityTimeout = 2 * time.Second
	cfg.ReclaimInterval = 100 * time.Millisecond
	w := mustNew(t, cfg)
	running(t, w)
	var peakQueued int64
	var reclaimedAfter time.Duration
	testenv.Eventually(t, 60*time.Second, func() bool {
		// parked reclaimed entries (the dead consumer's beyond the
		// reclaim budget) are outside the read-ahead bound
		st := w.Stats()
		peakQueued = max(peakQueued, st.Queued-st.Parked)
		if reclaimedAfter == 0 {
			ps, err := e.rdb.XPendingExt(context.Background(), &redis.XPendingExtArgs{Stream: deadS, Group: DefaultGroup, Start: "-", End: "+", Count: 10, Consumer: "dead"}).Result()
			if err == nil && len(ps) == 0 {
				reclaimedAfter = time.Since(died)
			}
		}
		return got.distinct() == 605
	}, "handled %d of 605", got.distinct())
	st := w.Stats()
	t.Logf("dead consumer's entries reclaimed %v after it died (promised: visibility timeout + reclaim interval + 1s = %v)", reclaimedAfter, cfg.VisibilityTimeout+cfg.ReclaimInterval+time.Second)
	if reclaimedAfter > cfg.VisibilityTimeout+cfg.ReclaimInterval+time.Second {
		t.Errorf("dead consumer's entries reclaimed after %v: the over-read queue left no reclaim budget", reclaimedAfter)
	}
	t.Logf("peak queued %d (read-ahead %d, concurrency %d); reclaimed %d by the only worker (5 from the dead consumer); handler calls %d for 605", peakQueued, cfg.ReadAhead, cfg.Concurrency, st.Reclaimed, got.total())
	if peakQueued > int64(cfg.ReadAhead+cfg.Concurrency) {
		t.Errorf("queued %d entries at once; want at most read-ahead + concurrency = %d", peakQueued, cfg.ReadAhead+cfg.Concurrency)
	}
	if st.Reclaimed > 5 {
		t.Errorf("the only worker reclaimed %d entries beyond the dead consumer's 5: its own stale read-ahead, handed back and taken again", st.Reclaimed-5)
	}
}

// TestBreakHTTPRedirectOddities: a 3xx without Location, a redirect to the
// same URL and a 300: one request each, a failed delivery (no RetryError),
// never a success.
func TestBreakHTTPRedirectOddities(t *testing.T) {
	for _, tt := range []struct {
		name string
		h    func(w http.ResponseWriter, r *http.Request)
	}{
		{"302-no-location", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(302) }},
		{"307-same-url", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, r.URL.Path, 307) }},
		{"308-same-url", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, r.URL.Path, 308) }},
		{"300", func(w http.ResponseWriter, r *http.Request) { w.Header().Set("Location", "/x"); w.WriteHeader(300) }},
		{"304", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(304) }},
	} {
		var hits atomic.Int64
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			_, _ = io.Copy(io.Discard, r.Body)
			tt.h(w, r)
		}))
		err := NewHTTPHandler(srv.URL+"/in", 2*time.Second).Handle(context.Background(), &Message{Value: []byte("x")})
		srv.Close()
		var re *RetryError
		if err == nil || errors.As(err, &re) || hits.Load() != 1 {
			t.Errorf("%s: Handle = %v after %d requests; want a counted failure after 1", tt.name, err, hits.Load())
		} else {
			t.Logf("%s: %v", tt.name, err)
		}
	}
}

// blackHole returns the address of a listener that never accepts, with a
// full accept queue: a connect to it hangs (the SYN is dropped), as to a
// firewalled or black-holed endpoint. Nothing is ever sent.
func blackHole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Skip(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Skip(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// fill the accept queue
	for range 4 {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
	}
	return addr
}

// TestBreakHTTPConnectTimeout: an endpoint whose SYNs are dropped (nothing
// sent) is as unavailable as one that refuses, but when the handler timeout
// (http.Client.Timeout) ends the dial, net/http replaces the *net.OpError
// with a string-only timeoutError and notSent does not see the dial: the
// attempt counts a delivery, and a black-holed endpoint dead-letters after
// MaxDeliveries × timeout instead of backing off for MaxTransientTime.
func TestBreakHTTPConnectTimeout(t *testing.T) {
	addr := blackHole(t)
	c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
	if err == nil {
		c.Close()
		t.Skip("the black hole accepted a connection; cannot simulate a dropped SYN here")
	}
	t.Logf("plain dial: %v", err)
	start := time.Now()
	err = NewHTTPHandler("http://"+addr+"/in", 500*time.Millisecond).Handle(context.Background(), &Message{Value: []byte("x")})
	var re *RetryError
	t.Logf("Handle after %v: %v (%T)", time.Since(start), err, errors.Unwrap(err))
	if !errors.As(err, &re) {
		t.Errorf("connect timeout (nothing sent): Handle = %v; want a RetryError (back off without counting a delivery), like connection refused", err)
	}
}

// TestBreakPausedQueueEatsReadAhead: a partition whose downstream asks to
// back off (RetryAfter) holds no slots while paused, but its queued entries
// (read ahead, and its due retries moved to its queue) still count in
// wanted()'s budget (ReadAhead + free - queued), which is global. The
// healthy partition beside it is then read a few entries at a time, its
// queue runs dry, and when a slot frees with nothing queued finish() does
// not wake the reader (only pick kicks it, when it takes a queued entry):
// the reader sleeps until its 100 ms wait ends. The healthy partition runs
// at a fraction of its rate alone.
func TestBreakPausedQueueEatsReadAhead(t *testing.T) {
	e := newEnv(t)
	paused := e.stream(t, "t", 0)
	ok := e.stream(t, "t", 1)
	ps := newPerStream()
	cfg := e.config(func(ctx context.Context, m *Message) error {
		defer ps.enter(m.Stream)()
		if m.Stream == paused {
			return RetryAfter(time.Second, errors.New("503"))
		}
		time.Sleep(20 * time.Millisecond)
		return nil
	})
	cfg.Concurrency = 4
	cfg.ReadAhead = 4
	cfg.VisibilityTimeout = 10 * time.Second
	w := mustNew(t, cfg)
	running(t, w)
	okDone := func() int { d, _, _ := ps.get(ok); return d }
	// alone
	start := time.Now()
	e.add(t, ok, 0, 300)
	testenv.Eventually(t, 30*time.Second, func() bool { return okDone() == 300 }, "healthy partition not done alone")
	alone := time.Since(start)
	// beside a paused partition
	e.add(t, paused, 0, 200)
	testenv.Eventually(t, 10*time.Second, func() bool { return w.Stats().Backoffs >= 8 }, "no back-offs")
	start = time.Now()
	e.add(t, ok, 300, 300)
	testenv.Eventually(t, 60*time.Second, func() bool { return okDone() == 600 }, "healthy partition not done beside the paused one")
	beside := time.Since(start)
	t.Logf("healthy partition, 300 × 20 ms on 4 slots: alone %v, beside a paused partition %v (%.2f of its rate alone); stats %+v",
		alone, beside, alone.Seconds()/beside.Seconds(), w.Stats())
	if beside > 2*alone {
		t.Errorf("beside a paused partition (which holds no slot) the healthy one took %v, alone %v: want at least half its rate", beside, alone)
	}
}

// TestBreakClusterManyStreams: on a real 3-master Redis Cluster, 300
// partition streams (each its own slot), a dead consumer holding entries of
// 20 of them, two workers, one of which is stopped half-way and replaced:
// every record handled, nothing left pending, duplicates only for reclaimed
// entries; then, all idle, one record appended to one stream is handled
// within about a block timeout.
//
//	REDIS_CLUSTER_PORT=39000 bash scripts/redis-cluster.sh start
//	REDIS_CLUSTER_ADDRS=127.0.0.1:39000,127.0.0.1:39001,127.0.0.1:39002 go test -race -run TestBreakCluster -v ./worker/
func TestBreakClusterManyStreams(t *testing.T) {
	addrs := os.Getenv("REDIS_CLUSTER_ADDRS")
	if addrs == "" {
		t.Skip("needs REDIS_CLUSTER_ADDRS")
	}
	ctx := context.Background()
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(addrs, ",")})
	t.Cleanup(func() { rdb.Close() })
	prefix := testenv.Name(t)
	const nStreams, per = 300, 20
	var streams []string
	for p := range nStreams {
		s := wire.StreamKey(prefix, "t", p)
		if err := rdb.XGroupCreateMkStream(ctx, s, DefaultGroup, "0").Err(); err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
		for o := range per {
			r := wire.Record{Topic: "t", Partition: p, Offset: int64(o), Time: time.UnixMilli(1700000000000),
				Value: []byte("v" + strconv.Itoa(o))}
			if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: s, ID: wire.EntryID(int64(o)), Values: r.AppendFields(nil)}).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(func() {
		for _, s := range streams {
			rdb.Del(context.Background(), s, wire.DLQKey(s), wire.ReplayKey(s))
		}
		rdb.Del(context.Background(), wire.RegistryKey(prefix))
	})
	// a dead consumer holds 5 entries of each of 20 streams
	for _, s := range streams[:20] {
		if err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "dead", Streams: []string{s, ">"}, Count: 5}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range streams {
		rdb.SAdd(ctx, wire.RegistryKey(prefix), s)
	}
	got := newSeen()
	cfg := Config{
		Redis: rdb, Prefix: prefix, Concurrency: 16,
		VisibilityTimeout: time.Second, AckInterval: 10 * time.Millisecond,
		DiscoveryInterval: 200 * time.Millisecond, BlockTimeout: 300 * time.Millisecond,
		ShutdownTimeout: 5 * time.Second, Logger: testLogger(t),
		Handler: func(ctx context.Context, m *Message) error {
			got.add(m)
			time.Sleep(time.Millisecond)
			return nil
		},
	}
	w1, w2 := mustNew(t, cfg), mustNew(t, cfg)
	stop1 := running(t, w1)
	running(t, w2)
	testenv.Eventually(t, 60*time.Second, func() bool { return got.distinct() >= nStreams*per/2 }, "half not handled: %d", got.distinct())
	if err := stop1(); err != nil {
		t.Errorf("stop w1: %v", err)
	}
	w3 := mustNew(t, cfg)
	running(t, w3)
	testenv.Eventually(t, 120*time.Second, func() bool { return got.distinct() == nStreams*per }, "handled %d of %d", got.distinct(), nStreams*per)
	pend := func() int64 {
		n := int64(0)
		for _, s := range streams {
			p, err := rdb.XPending(ctx, s, DefaultGroup).Result()
			if err != nil {
				t.Fatal(err)
			}
			n += p.Count
		}
		return n
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return pend() == 0 }, "pending %d", pend())
	reclaimed := w1.Stats().Reclaimed + w2.Stats().Reclaimed + w3.Stats().Reclaimed
	dups := got.total() - nStreams*per
	t.Logf("handled %d records, %d handler calls, reclaimed %d (100 from the dead consumer); w1 %+v", got.distinct(), got.total(), reclaimed, w1.Stats())
	if int64(dups) > reclaimed {
		t.Errorf("%d duplicate handler calls, more than the %d reclaimed entries", dups, reclaimed)
	}
	// idle: one record appended to one stream
	time.Sleep(2 * time.Second)
	for i, p := range []int{7, 133, 299} {
		s := streams[p]
		r := wire.Record{Topic: "t", Partition: p, Offset: per + int64(i), Value: []byte("late")}
		start := time.Now()
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: s, ID: wire.EntryID(per + int64(i)), Values: r.AppendFields(nil)}).Err(); err != nil {
			t.Fatal(err)
		}
		want := nStreams*per + i + 1
		testenv.Eventually(t, 10*time.Second, func() bool { return got.distinct() == want }, "late record not handled")
		lat := time.Since(start)
		t.Logf("idle worker: a record appended to stream %d handled after %v (block timeout %v)", p, lat, cfg.BlockTimeout)
		if lat > 2*cfg.BlockTimeout+200*time.Millisecond {
			t.Errorf("record appended to an idle stream handled after %v; want within about the block timeout %v", lat, cfg.BlockTimeout)
		}
	}
}

// TestBreakManyBusyStreams: 1,000 streams with 10 entries each against one
// stream with the same 10,000 entries, same worker settings, handler 0 ms:
// the scheduler's per-pick and per-join cost (pick and update loop over the
// contenders) should not make many busy streams much slower than one.
func TestBreakManyBusyStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	e := newEnv(t)
	run := func(n, per int, topic string) time.Duration {
		var streams []string
		for p := range n {
			s := e.stream(t, topic, p)
			streams = append(streams, s)
		}
		for _, s := range streams {
			e.add(t, s, 0, per)
		}
		var done atomic.Int64
		cfg := e.config(func(ctx context.Context, m *Message) error { done.Add(1); return nil })
		cfg.Concurrency = 32
		cfg.VisibilityTimeout = 30 * time.Second
		cfg.BlockTimeout = 100 * time.Millisecond
		cfg.Topics = []string{topic}
		w := mustNew(t, cfg)
		start := time.Now()
		stop := running(t, w)
		testenv.Eventually(t, 120*time.Second, func() bool { return done.Load() == int64(n*per) }, "done %d", done.Load())
		took := time.Since(start)
		_ = stop()
		return took
	}
	one := run(1, 10000, "one")
	many := run(1000, 10, "many")
	t.Logf("10,000 records: 1 stream %v, 1,000 streams × 10 %v (%.2f)", one, many, one.Seconds()/many.Seconds())
}

// lossyRedis makes a share of chosen commands fail after Redis ran them (the
// reply is lost: a network error mid-read), on single commands and in
// pipelines.
type lossyRedis struct {
	mu   sync.Mutex
	rnd  *rand.Rand
	rate float64
	what map[string]bool
	n    atomic.Int64
}

func (l *lossyRedis) hit(c redis.Cmder) bool {
	if !l.what[strings.ToLower(c.Name())] {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rate > 0 && l.rnd.Float64() < l.rate {
		l.n.Add(1)
		return true
	}
	return false
}

func (l *lossyRedis) DialHook(next redis.DialHook) redis.DialHook { return next }
func (l *lossyRedis) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, c redis.Cmder) error {
		err := next(ctx, c)
		if err == nil && l.hit(c) {
			c.SetErr(errors.New("injected: reply lost"))
			return c.Err()
		}
		return err
	}
}
func (l *lossyRedis) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			if c.Err() == nil && l.hit(c) {
				c.SetErr(errors.New("injected: reply lost"))
				err = c.Err()
			}
		}
		return err
	}
}

// TestBreakChaos: several workers, restarted all the time (graceful stops
// with a short shutdown timeout, handlers that hang past it), replies of
// XREADGROUP, EVALSHA (the scripts), XACK and XPENDING lost after Redis ran
// them, and handlers that fail, back off, panic or always fail. At the end
// every record was handled or dead-lettered, nothing is pending, and no
// entry ever ran twice at once in one worker.
func TestBreakChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	e := newEnv(t)
	const nStreams, per = 6, 300
	var streams []string
	for p := range nStreams {
		s := e.stream(t, "t", p)
		e.add(t, s, 0, per)
		streams = append(streams, s)
	}
	lossy := &lossyRedis{rnd: rand.New(rand.NewSource(time.Now().UnixNano())), rate: 0.03,
		what: map[string]bool{"xreadgroup": true, "evalsha": true, "eval": true, "xack": true, "xpending": true}}
	if r, err := strconv.ParseFloat(os.Getenv("CHAOS_RATE"), 64); err == nil {
		lossy.rate = r
	}
	rdb := redis.NewClient(&redis.Options{Addr: e.rdb.Options().Addr})
	rdb.AddHook(lossy)
	t.Cleanup(func() { rdb.Close() })

	type key struct {
		s string
		o int64
	}
	var mu sync.Mutex
	ok := map[key]int{}
	attempts := map[key]int{}
	inWorker := map[string]map[key]int{}
	var doubles atomic.Int64
	handler := func(name string) Handler {
		return func(ctx context.Context, m *Message) error {
			k := key{m.Stream, m.Offset}
			mu.Lock()
			if inWorker[name] == nil {
				inWorker[name] = map[key]int{}
			}
			inWorker[name][k]++
			if inWorker[name][k] > 1 {
				doubles.Add(1)
				t.Logf("DOUBLE in %s: %s offset %d", name, m.Stream, m.Offset)
			}
			attempts[k]++
			a := attempts[k]
			mu.Unlock()
			defer func() { mu.Lock(); inWorker[name][k]--; mu.Unlock() }()
			switch {
			case m.Offset%31 == 0:
				return errors.New("always fails")
			case m.Offset%10 == 0 && a <= 2:
				return errors.New("fails twice")
			case m.Offset%17 == 0 && a == 1:
				return RetryAfter(50*time.Millisecond, errors.New("busy"))
			case m.Offset%23 == 0 && a == 1:
				panic("boom")
			case m.Offset%97 == 0 && a == 1:
				<-ctx.Done() // hangs until the shutdown timeout
				return ctx.Err()
			}
			time.Sleep(time.Duration(m.Offset%5) * time.Millisecond)
			mu.Lock()
			ok[k]++
			mu.Unlock()
			return nil
		}
	}
	cfg := e.config(nil)
	cfg.Redis = rdb
	cfg.Concurrency = 8
	cfg.MaxDeliveries = 4
	cfg.VisibilityTimeout = 600 * time.Millisecond
	cfg.ReclaimInterval = 100 * time.Millisecond
	cfg.BackoffMin, cfg.BackoffMax = 20*time.Millisecond, 80*time.Millisecond
	cfg.ShutdownTimeout = 300 * time.Millisecond
	cfg.ConsumerIdleTimeout = 200 * time.Millisecond
	var stops []func() error
	n := 0
	start := func() {
		n++
		c := cfg
		c.Consumer = "w" + strconv.Itoa(n)
		c.Handler = handler(c.Consumer)
		stops = append(stops, running(t, mustNew(t, c)))
	}
	for range 3 {
		start()
	}
	dlq := func() map[key]bool {
		out := map[key]bool{}
		dls, err := ListDeadLetters(context.Background(), e.rdb, e.prefix, Filter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range dls {
			out[key{d.Stream, d.Offset}] = true
		}
		return out
	}
	finished := func() (int, int) {
		d := dlq()
		mu.Lock()
		defer mu.Unlock()
		done := 0
		for _, s := range streams {
			for o := range int64(per) {
				if ok[key{s, o}] > 0 || d[key{s, o}] {
					done++
				}
			}
		}
		return done, len(d)
	}
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if d, _ := finished(); d == nStreams*per {
			break
		}
		time.Sleep(700 * time.Millisecond)
		// restart the oldest worker
		_ = stops[0]()
		stops = stops[1:]
		start()
	}
	lossy.mu.Lock()
	lossy.rate = 0
	lossy.mu.Unlock()
	testenv.Eventually(t, 60*time.Second, func() bool { d, _ := finished(); return d == nStreams*per }, "finished %v", func() int { d, _ := finished(); return d }())
	pend := func() int64 {
		x := int64(0)
		for _, s := range streams {
			x += e.pending(t, s, DefaultGroup)
		}
		return x
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return pend() == 0 }, "pending %d", pend())
	d, nd := finished()
	mu.Lock()
	calls := 0
	for _, a := range attempts {
		calls += a
	}
	var wrongDLQ int
	dl := dlq()
	for k := range dl {
		if k.o%31 != 0 && ok[k] == 0 {
			wrongDLQ++
			t.Logf("dead-lettered without success: %s offset %d after %d handler calls", k.s, k.o, attempts[k])
		}
	}
	mu.Unlock()
	t.Logf("%d workers over the run; %d of %d records handled or dead-lettered (%d dead letters, %d of them not always-failing and never handled), %d handler calls, %d replies lost", n, d, nStreams*per, nd, wrongDLQ, calls, lossy.n.Load())
	if doubles.Load() > 0 {
		t.Errorf("%d times an entry ran while already running in the same worker", doubles.Load())
	}
}

// TestBreakHTTPAfterSentCounts: failures after the request went out count a
// delivery (no RetryError): no answer within the timeout, the connection
// closed after the request was read, a reset mid-answer.
func TestBreakHTTPAfterSentCounts(t *testing.T) {
	for _, tt := range []struct {
		name string
		h    func(w http.ResponseWriter, r *http.Request)
	}{
		{"no-answer", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			time.Sleep(time.Second)
		}},
		{"closed-after-read", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close()
		}},
		{"reset-mid-answer", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			c, _, _ := w.(http.Hijacker).Hijack()
			_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"))
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			c.Close()
		}},
	} {
		var hits atomic.Int64
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1); tt.h(w, r) }))
		err := NewHTTPHandler(srv.URL+"/in", 300*time.Millisecond).Handle(context.Background(), &Message{Value: []byte("x")})
		srv.Close()
		var re *RetryError
		t.Logf("%s: %d requests, Handle = %v", tt.name, hits.Load(), err)
		if errors.As(err, &re) {
			t.Errorf("%s: a failure after the request was sent backed off without counting a delivery", tt.name)
		}
	}
}

// TestBreakBackoffRetryAfterStolenAndAcked: an entry waiting out a
// RetryAfter back-off is reclaimed by another consumer and acknowledged
// there. When its timer fires, attempt() checks only the local held map (the
// lease loop notices the loss up to VisibilityTimeout/3 later), and a
// back-off retry counts no delivery, so no script asks Redis: the handler
// runs again for an entry already done. (A failure retry is safe: the
// redeliver script checks ownership.)
func TestBreakBackoffRetryAfterStolenAndAcked(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 1)
	var calls atomic.Int64
	cfg := e.config(func(ctx context.Context, m *Message) error {
		if calls.Add(1) == 1 {
			return RetryAfter(time.Second, errors.New("busy"))
		}
		return nil
	})
	cfg.VisibilityTimeout = 30 * time.Second // lease loop every 10 s
	w := mustNew(t, cfg)
	running(t, w)
	testenv.Eventually(t, 5*time.Second, func() bool { return w.Stats().Waiting == 1 }, "not waiting")
	ctx := context.Background()
	if err := e.rdb.XClaimJustID(ctx, &redis.XClaimArgs{Stream: s, Group: DefaultGroup, Consumer: "thief", MinIdle: 0, Messages: []string{"0-1"}}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.XAck(ctx, s, DefaultGroup, "0-1").Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	t.Logf("handler calls %d; stats %+v", calls.Load(), w.Stats())
	if calls.Load() > 1 {
		t.Errorf("the handler ran again (%d calls) for an entry another consumer had taken and acknowledged", calls.Load())
	}
}

// TestBreakStreamLeavesDiscovery: a stream removed from the registry while
// the worker holds entries of it (queued, running, waiting for a retry):
// everything it holds is still handled and acknowledged; nothing stays
// pending held by a worker that no longer reads the stream.
func TestBreakStreamLeavesDiscovery(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 30)
	var mu sync.Mutex
	calls := map[int64]int{}
	okd := map[int64]bool{}
	cfg := e.config(func(ctx context.Context, m *Message) error {
		mu.Lock()
		calls[m.Offset]++
		c := calls[m.Offset]
		mu.Unlock()
		time.Sleep(30 * time.Millisecond)
		if c == 1 && m.Offset%2 == 0 {
			return errors.New("first try fails")
		}
		if c == 1 && m.Offset%3 == 0 {
			return RetryAfter(300*time.Millisecond, errors.New("busy"))
		}
		mu.Lock()
		okd[m.Offset] = true
		mu.Unlock()
		return nil
	})
	cfg.Concurrency = 2
	cfg.ReadAhead = 4
	cfg.BackoffMin, cfg.BackoffMax = 300*time.Millisecond, 300*time.Millisecond
	w := mustNew(t, cfg)
	running(t, w)
	testenv.Eventually(t, 5*time.Second, func() bool { st := w.Stats(); return st.Waiting > 0 && st.Queued > 0 }, "nothing waiting and queued")
	if err := e.rdb.SRem(context.Background(), wire.RegistryKey(e.prefix), s).Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return w.Stats().Streams == 0 }, "stream still listed")
	testenv.Eventually(t, 10*time.Second, func() bool { st := w.Stats(); return st.Held == 0 }, "worker still holds %+v", w.Stats())
	time.Sleep(300 * time.Millisecond)
	p, err := e.rdb.XPendingExt(context.Background(), &redis.XPendingExtArgs{Stream: s, Group: DefaultGroup, Start: "-", End: "+", Count: 100}).Result()
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	t.Logf("after the stream left discovery: %d handled, %d pending in Redis; stats %+v", len(okd), len(p), w.Stats())
	mu.Unlock()
	for _, x := range p {
		if x.Idle < cfg.VisibilityTimeout && x.Consumer == w.Consumer() {
			// still leased? the worker holds nothing, so it must be idle-growing
			t.Logf("pending %s under %s idle %v", x.ID, x.Consumer, x.Idle)
		}
	}
	// whatever is pending is reclaimable: not leased by anyone
	time.Sleep(cfg.VisibilityTimeout)
	p2, _ := e.rdb.XPendingExt(context.Background(), &redis.XPendingExtArgs{Stream: s, Group: DefaultGroup, Start: "-", End: "+", Count: 100, Idle: cfg.VisibilityTimeout}).Result()
	if len(p2) != len(p) {
		t.Errorf("%d entries pending, only %d of them idle for the visibility timeout: something still extends leases of a stream no one reads", len(p), len(p2))
	}
}
