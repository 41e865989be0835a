package worker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
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

// Break-it review R-sched2 (worker after the scheduler fixes). A test that
// fails here fails on purpose: it is a finding, with what the docs promise.

// TestDeadWorkersReadAheadNotDeadLettered (review R-sched2): Config.MaxDeliveries
// says "1 dead-letters on the first failure". A worker that read entries
// ahead (they wait in its queue, never started) and was SIGKILLed leaves
// them pending with a delivery count of 1; the survivor's XAUTOCLAIM makes
// it 2. The dead letter is decided on the runs recorded (start.lua), not on
// the delivery count, so the survivor runs all 8: records whose handler
// never ran are not dead-lettered.
func TestDeadWorkersReadAheadNotDeadLettered(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 8)
	ctx := context.Background()
	// "dead" read 8 entries ahead of its handlers (its read-ahead) and was
	// SIGKILLed before starting any of them.
	if err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "dead", Streams: []string{s, ">"}, Count: 8}).Err(); err != nil {
		t.Fatal(err)
	}
	got := newSeen()
	cfg := e.config(func(_ context.Context, m *Message) error { got.add(m); return nil })
	cfg.MaxDeliveries = 1
	w := mustNew(t, cfg)
	running(t, w)
	testenv.Eventually(t, 15*time.Second, func() bool { return e.pending(t, s, DefaultGroup) == 0 }, "entries still pending")
	dl, _ := e.rdb.XLen(ctx, wire.DLQKey(s)).Result()
	t.Logf("8 entries read ahead by a dead worker, never started; MaxDeliveries 1: handled %d, dead-lettered %d (Stats %+v)", got.distinct(), dl, w.Stats())
	if dl != 0 || got.distinct() != 8 {
		t.Errorf("%d of 8 entries dead-lettered and %d handled: entries whose handler never ran were dead-lettered (want 0 dead letters, 8 handled: MaxDeliveries 1 = dead-letter on the first failure)", dl, got.distinct())
	}
}

// review2PipeHook holds up the lease pipeline (lease.lua, sent by
// extendLeases after its snapshot of the held entries) while armed: it
// says so on inFlight and waits for go.
type review2PipeHook struct {
	armed    *atomic.Bool
	inFlight chan struct{}
	goOn     chan struct{}
}

func (review2PipeHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (review2PipeHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h review2PipeHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && cmds[0].Name() == "eval" && len(cmds[0].Args()) > 1 {
			if src, _ := cmds[0].Args()[1].(string); strings.Contains(src, "lease.lua") && h.armed.CompareAndSwap(true, false) {
				close(h.inFlight)
				select {
				case <-h.goOn:
				case <-time.After(10 * time.Second):
				}
			}
		}
		return next(ctx, cmds)
	}
}

// TestHandBackNotUndoneByLeaseRound (review R-sched2): at shutdown, the
// entries read ahead and not started are handed back (unclaim.lua: idle time
// set to the visibility timeout, "so that any worker's next XAUTOCLAIM takes
// it"). The lease loop keeps running until the handlers have finished, and a
// lease round whose snapshot of Worker.held was taken before the hand-back
// sends lease.lua for those entries after it; unclaim.lua moved them to the
// consumer "handed-back", so lease.lua finds them no longer this consumer's
// and leaves their idle time alone (the same holds for takeStale's
// hand-backs). The hook below widens the window between the snapshot and
// the script; it happens on its own whenever a lease round is in flight at
// the hand-back.
func TestHandBackNotUndoneByLeaseRound(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 12)
	ctx := context.Background()
	h := review2PipeHook{armed: &atomic.Bool{}, inFlight: make(chan struct{}), goOn: make(chan struct{})}
	rdb := redis.NewClient(&redis.Options{Addr: e.rdb.Options().Addr})
	defer rdb.Close()
	rdb.AddHook(h)
	var logs syncBuffer
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	cfg := e.config(func(ctx context.Context, m *Message) error {
		once.Do(func() { close(started) })
		if m.Offset == 0 {
			<-release
		}
		return nil
	})
	cfg.Redis = rdb
	cfg.Consumer = "review2-handback"
	cfg.Concurrency = 1
	cfg.ReadAhead = 10
	cfg.VisibilityTimeout = 3 * time.Second
	cfg.ShutdownTimeout = 10 * time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	w := mustNew(t, cfg)
	stop := running(t, w)
	<-started
	testenv.Eventually(t, 10*time.Second, func() bool { return w.Stats().Queued >= 5 }, "entries not read ahead")
	h.armed.Store(true)
	select {
	case <-h.inFlight: // a lease round took its snapshot: the queued entries are in it
	case <-time.After(10 * time.Second):
		t.Fatal("no lease round")
	}
	queued := w.Stats().Queued
	errc := make(chan error, 1)
	go func() { errc <- stop() }()
	testenv.Eventually(t, 10*time.Second, func() bool { return strings.Contains(logs.String(), "handed back entries not started") }, "no hand-back logged")
	close(h.goOn) // the lease round of the old snapshot reaches Redis now
	time.Sleep(100 * time.Millisecond)
	close(release)
	if err := <-errc; err != nil {
		t.Fatalf("Run: %v", err)
	}
	ps, err := e.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: s, Group: DefaultGroup, Start: "-", End: "+", Count: 100}).Result()
	if err != nil {
		t.Fatal(err)
	}
	var reset []string
	for _, p := range ps {
		if p.Idle < cfg.VisibilityTimeout {
			reset = append(reset, fmt.Sprintf("%s idle %v", p.ID, p.Idle.Round(time.Millisecond)))
		}
	}
	t.Logf("%d queued at shutdown, %d pending after Run returned, %d of them idle below the visibility timeout %v", queued, len(ps), len(reset), cfg.VisibilityTimeout)
	if len(ps) == 0 {
		t.Fatal("nothing pending after shutdown: nothing was handed back, the test shows nothing")
	}
	if len(reset) > 0 {
		t.Errorf("handed-back entries not reclaimable at once (their lease was extended after the hand-back): %v", reset)
	}
}

// TestHTTPTimeoutAtLeaseEnd: --handler-timeout equal to the
// visibility timeout, an endpoint that never answers, two workers. The
// lease is extended while the request runs, so no second worker takes the
// entry while the first still sends it; each timed-out request counts one
// delivery (the headers were sent: the endpoint may have acted), and the
// entry is dead-lettered after MaxDeliveries requests.
func TestHTTPTimeoutAtLeaseEnd(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 1)
	var mu sync.Mutex
	inflight, peak, calls := 0, 0, 0
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inflight++
		calls++
		peak = max(peak, inflight)
		mu.Unlock()
		_, _ = io.Copy(io.Discard, r.Body) // then the server notices the client going away (r.Context)
		<-r.Context().Done()
		mu.Lock()
		inflight--
		mu.Unlock()
	}))
	defer srv.Close()
	const v = 600 * time.Millisecond
	for i := range 2 {
		cfg := e.config(NewHTTPHandler(srv.URL, v).Handle)
		cfg.Consumer = fmt.Sprintf("review2-http-%d", i)
		cfg.MaxDeliveries = 3
		cfg.VisibilityTimeout = v
		running(t, mustNew(t, cfg))
	}
	ctx := context.Background()
	testenv.Eventually(t, 30*time.Second, func() bool {
		n, _ := e.rdb.XLen(ctx, wire.DLQKey(s)).Result()
		return n == 1 && e.pending(t, s, DefaultGroup) == 0
	}, "not dead-lettered")
	time.Sleep(2 * v)
	mu.Lock()
	defer mu.Unlock()
	t.Logf("handler timeout = visibility timeout %v, endpoint never answers, 2 workers: %d requests, peak %d at once, 1 dead letter", v, calls, peak)
	if peak != 1 {
		t.Errorf("the entry was sent %d times at once: a second worker took it while the first still ran it", peak)
	}
	if calls != 3 {
		t.Errorf("%d requests before the dead letter, want MaxDeliveries = 3", calls)
	}
}

// TestDocsACLRuleCoversWorker: every command the worker's start-up
// probe checks (WorkerRedisCommands) is in docs/operations.md's ACL rule,
// and the list the docs give for "kbridge worker ... makes the same checks"
// is exactly the probe's.
func TestDocsACLRuleCoversWorker(t *testing.T) {
	text, rule := testenv.DocsOperations(t), testenv.DocsACLRule(t)
	var missing []string
	for _, c := range WorkerRedisCommands() {
		if !slices.Contains(rule, c) {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		t.Errorf("the worker needs %v, not in the documented rule %v", missing, rule)
	}
	j := strings.Index(text, "one harmless call of each command it runs (")
	if j < 0 {
		t.Fatal("docs/operations.md: the worker's start-up check list not found")
	}
	list := text[j+len("one harmless call of each command it runs ("):]
	list = list[:strings.Index(list, ")")]
	var docs []string
	for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(list, -1) {
		docs = append(docs, strings.ToLower(strings.ReplaceAll(strings.Join(strings.Fields(m[1]), " "), " ", "|")))
	}
	probe := WorkerRedisCommands()
	slices.Sort(docs)
	slices.Sort(probe)
	t.Logf("rule: %d commands; worker probe: %v; docs list: %v", len(rule), probe, docs)
	if !slices.Equal(docs, probe) {
		t.Errorf("docs list the worker's start-up checks as %v; the probe checks %v", docs, probe)
	}
}

// TestRedisRestartUnderWorker (review R-sched2): a Redis of the test's own restarts
// under a running worker that has entries running, queued and waiting for a
// retry — empty (no persistence; the ingest writes the records again, with
// the same IDs) or from an older snapshot (RDB: acknowledgements and reads
// after it are forgotten). Every record ends handled with success at least
// once, nothing stays pending, nothing is dead-lettered. One worker alone:
// nobody took anything from it, so Stats.LeaseLost stays 0; the held
// entries Redis forgot count as Stats.Vanished.
func TestRedisRestartUnderWorker(t *testing.T) {
	for _, persist := range []string{"none", "rdb"} {
		t.Run(persist, func(t *testing.T) {
			srv := testenv.StartRedisServer(t, persist)
			rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
			defer rdb.Close()
			e := &env{rdb: rdb, prefix: testenv.Name(t)}
			s := e.stream(t, "t", 0)
			const n = 40
			e.add(t, s, 0, n)
			var mu sync.Mutex
			ok, calls := map[int64]int{}, 0
			cfg := e.config(func(ctx context.Context, m *Message) error {
				mu.Lock()
				calls++
				mu.Unlock()
				if m.Offset%5 == 0 && m.Deliveries == 1 {
					return fmt.Errorf("first delivery of %d fails", m.Offset)
				}
				d := 30 * time.Millisecond
				if m.Offset == 17 {
					d = time.Second
				}
				time.Sleep(d)
				mu.Lock()
				ok[m.Offset]++
				mu.Unlock()
				return nil
			})
			cfg.Concurrency = 3
			cfg.VisibilityTimeout = time.Second
			cfg.BackoffMin = 400 * time.Millisecond
			cfg.BackoffMax = 400 * time.Millisecond
			cfg.MaxDeliveries = 10
			w := mustNew(t, cfg)
			running(t, w)
			handled := func() int { mu.Lock(); defer mu.Unlock(); return len(ok) }
			ctx := context.Background()
			if persist == "rdb" {
				testenv.Eventually(t, 20*time.Second, func() bool { return handled() >= 8 }, "not started")
				if err := rdb.Save(ctx).Err(); err != nil {
					t.Fatal(err)
				}
			}
			testenv.Eventually(t, 20*time.Second, func() bool { return handled() >= 16 && w.Stats().Waiting > 0 }, "no progress")
			before := w.Stats()
			srv.Crash(t)
			time.Sleep(500 * time.Millisecond)
			srv.Start(t)
			if persist == "none" {
				// The ingest starts over from the committed offsets: the same
				// records, the same IDs.
				e.stream(t, "t", 0)
				e.add(t, s, 0, n)
			}
			testenv.Eventually(t, 60*time.Second, func() bool {
				p, err := rdb.XPending(ctx, s, DefaultGroup).Result()
				return handled() == n && err == nil && p.Count == 0
			}, "after the restart: %d of %d handled with success", handled(), n)
			dl, _ := rdb.XLen(ctx, wire.DLQKey(s)).Result()
			mu.Lock()
			t.Logf("restart (%s) with %+v: %d of %d handled, %d handler calls, %d dead letters; after: %+v", persist, before, len(ok), n, calls, dl, w.Stats())
			mu.Unlock()
			if dl != 0 {
				t.Errorf("%d dead letters", dl)
			}
			if st := w.Stats(); st.LeaseLost != 0 {
				t.Errorf("LeaseLost = %d with one worker (nobody took anything; Vanished = %d)", st.LeaseLost, st.Vanished)
			}
		})
	}
}

// TestStartBeforeRedis: a worker started 3 s before its Redis
// (connection refused meanwhile) keeps trying and then works: a transient
// error is not fatal.
func TestStartBeforeRedis(t *testing.T) {
	if !testenv.RealRedis() {
		t.Skip("needs redis-server")
	}
	srv := &testenv.RedisServer{Port: testenv.FreePort(t), Persist: "none", Dir: t.TempDir()}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	e := &env{rdb: rdb, prefix: testenv.Name(t)}
	sn := newSeen()
	cfg := e.config(func(_ context.Context, m *Message) error { sn.add(m); return nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	start := time.Now()
	go func() { errc <- mustNew(t, cfg).Run(ctx) }()
	select {
	case err := <-errc:
		t.Fatalf("Run returned %v after %v with Redis refusing connections; want it to keep trying", err, time.Since(start))
	case <-time.After(3 * time.Second):
	}
	srv.Start(t)
	t.Cleanup(func() { srv.Stop(t) })
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 5)
	testenv.Eventually(t, 30*time.Second, func() bool { return sn.distinct() == 5 }, "handled %d of 5 after Redis came up", sn.distinct())
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("Run = %v", err)
	}
	t.Logf("Redis up %v after the worker started; 5 records handled %v later", 3*time.Second, time.Since(start)-3*time.Second)
}
