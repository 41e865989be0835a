package bridge_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
)

// commitWatch samples the group's committed offsets and reports any that go
// backwards (invariant 3).
type commitWatch struct {
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	samples int
	back    []string
}

func (e *env) watchCommits(t *testing.T) *commitWatch {
	w := &commitWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		prev := map[int]int64{}
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			c := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
			w.mu.Lock()
			w.samples++
			for p, off := range c {
				if p0, ok := prev[p]; ok && off < p0 {
					w.back = append(w.back, fmt.Sprintf("partition %d: %d after %d", p, off, p0))
				}
				if p0, ok := prev[p]; !ok || off > p0 {
					prev[p] = off
				}
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *commitWatch) finish(t *testing.T) {
	close(w.stop)
	<-w.done
	if len(w.back) > 0 {
		t.Errorf("commits went backwards: %v", w.back)
		return
	}
	t.Logf("%d commit samples, none went backwards", w.samples)
}

// waitDone waits until l holds every record up to the log end, and the
// commits reach it; then it checks nothing was lost.
func (e *env) waitDone(t *testing.T, l *ledger, within time.Duration) (lost, dups int) {
	t.Helper()
	end := testenv.LogEnd(t, e.brokers, e.topic, e.partitions)
	var want int64
	for _, v := range end {
		want += v
	}
	testenv.Eventually(t, within, func() bool { return int64(l.total()) >= want },
		"processed %d of %d records", func() any { return l.total() }, want)
	testenv.Eventually(t, 30*time.Second, func() bool {
		c := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
		for p := range end {
			if c[p] != end[p] {
				return false
			}
		}
		return true
	}, "commits did not reach the log end %v", end)
	lost, dups = l.check(end)
	if lost != 0 {
		t.Errorf("lost %d records", lost)
	}
	return lost, dups
}

// TestIngestSIGKILL: the ingest process is SIGKILLed mid-stream and started
// again: zero records lost, and no record is appended or delivered twice (the
// restarted ingest starts from max(committed, top+1); invariants 1 and 8).
func TestIngestSIGKILL(t *testing.T) {
	const n = 20_000
	e := newEnv(t, 4)
	testenv.Produce(t, e.brokers, e.topic, 0, n)
	bin := testenv.BuildKbridge(t)
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "--redis-url", "redis://"+e.redis.Addr, "--prefix", e.prefix, "--log-level", "warn",
			"ingest", "--brokers", strings.Join(e.brokers, ","), "--topics", e.topic, "--group", e.group,
			"--partition-cap", "500", "--commit-interval", "100ms", "--fetch-max-wait", "100ms",
			"--session-timeout", "6s", "--heartbeat-interval", "500ms", "--rebalance-timeout", "15s")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	ingest := start()
	l := e.startWork(t, 100*time.Microsecond)
	watch := e.watchCommits(t)

	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() >= n/4 }, "processed %d", l.total())
	if err := ingest.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = ingest.Wait()
	killedAt := l.total()
	t.Logf("SIGKILLed the ingest after %d records were processed", killedAt)
	ingest = start()
	stopped := false
	defer func() {
		if !stopped {
			_ = ingest.Process.Kill()
			_ = ingest.Wait()
		}
	}()

	lost, dups := e.waitDone(t, l, 2*time.Minute)
	watch.finish(t)
	// SIGTERM: final commit, leave the group, exit 0.
	began := time.Now()
	if err := ingest.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := ingest.Wait()
	stopped = true
	if err != nil {
		t.Errorf("ingest after SIGTERM: %v, want exit status 0", err)
	}
	t.Logf("SIGTERM: the ingest exited in %v", time.Since(began).Round(time.Millisecond))
	if dups != 0 {
		t.Errorf("%d records were delivered twice, want 0: the restarted ingest appended something again", dups)
	}
	// The streams hold each offset at most once, in order, with no gap
	// between what they still hold.
	for p := 0; p < e.partitions; p++ {
		offs := e.streamOffsets(t, p)
		for i := 1; i < len(offs); i++ {
			if offs[i] != offs[i-1]+1 {
				t.Errorf("partition %d: stream jumps from %d to %d", p, offs[i-1], offs[i])
			}
		}
	}
	t.Logf("SIGKILL mid-stream: %d records, %d processed, lost=%d duplicates=%d", n, l.total(), lost, dups)
}

// TestSecondIngestJoinsAndLeaves: under load, a second ingest joins the group
// and later leaves. Zero lost, zero duplicates, commits never go backwards,
// and the worker keeps consuming through both rebalances (invariant 8).
func TestSecondIngestJoinsAndLeaves(t *testing.T) {
	const total = 20_000
	e := newEnv(t, 4)
	// Load: records keep arriving during both rebalances.
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		for from := 0; from < total; from += 500 {
			testenv.Produce(t, e.brokers, e.topic, from, 500)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	cfg := e.config(t)
	cfg.PartitionCap = 1000
	a := startIngest(t, cfg)
	l := e.startWork(t, 200*time.Microsecond)
	watch := e.watchCommits(t)

	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() >= 2000 }, "processed %d", l.total())
	b := startIngest(t, cfg)
	testenv.Eventually(t, 60*time.Second, func() bool {
		return len(a.Stats().Partitions) > 0 && len(b.Stats().Partitions) > 0 &&
			len(a.Stats().Partitions)+len(b.Stats().Partitions) == e.partitions
	}, "partitions not shared: a has %d, b has %d", len(a.Stats().Partitions), len(b.Stats().Partitions))
	joined := l.total()
	t.Logf("second ingest joined: a has %d partitions, b has %d; %d processed", len(a.Stats().Partitions), len(b.Stats().Partitions), joined)
	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() >= joined+1000 },
		"the worker stopped consuming after the join: %d → %d", joined, l.total())

	b.stop(t)
	testenv.Eventually(t, 60*time.Second, func() bool { return len(a.Stats().Partitions) == e.partitions },
		"a did not take back every partition: %d", len(a.Stats().Partitions))
	left := l.total()
	t.Logf("second ingest left: a has %d partitions; %d processed", len(a.Stats().Partitions), left)
	<-produced
	lost, dups := e.waitDone(t, l, 2*time.Minute)
	if l.total() <= left {
		t.Errorf("the worker processed nothing after the leave")
	}
	watch.finish(t)
	if dups != 0 {
		t.Errorf("%d records delivered twice, want 0", dups)
	}
	st := a.Stats()
	t.Logf("join+leave under load: %d records, lost=%d duplicates=%d, a: rebalances=%d duplicates skipped=%d",
		total, lost, dups, st.Rebalances, st.DuplicatesSkipped)
}

// TestRedisRestartedEmpty: a Redis without persistence is restarted
// mid-stream, losing every stream and group. The ingest notices, recreates the
// groups and fetches again from its commit: zero lost (invariant 5).
func TestRedisRestartedEmpty(t *testing.T) {
	const n = 20_000
	srv := testenv.StartRedisServer(t, "none")
	e, in, l, watch := newRedisScenario(t, srv, n, nil)

	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() >= n/4 }, "processed %d", l.total())
	srv.Stop(t)
	t.Logf("redis stopped after %d records processed", l.total())
	// While Redis is down the ingest retries, says so, and commits nothing.
	errs := in.Stats().RedisErrors
	testenv.Eventually(t, 30*time.Second, func() bool { return in.Stats().RedisErrors > errs }, "no Redis error seen while Redis is down")
	down := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
	// A few more failed attempts, each one a chance to commit wrongly.
	errs = in.Stats().RedisErrors
	testenv.Eventually(t, 30*time.Second, func() bool { return in.Stats().RedisErrors >= errs+3 }, "no more Redis errors while Redis is down")
	if still := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions); !sameOffsets(down, still) {
		t.Errorf("commits moved while Redis was down: %v → %v", down, still)
	}
	srv.Start(t)
	lost, dups := e.waitDone(t, l, 2*time.Minute)
	watch.finish(t)
	st := in.Stats()
	if st.Losses == 0 {
		t.Errorf("the ingest did not notice that Redis lost its streams")
	}
	t.Logf("redis restarted empty: %d records, lost=%d duplicates=%d (re-fetched after the loss), losses seen=%d, redis errors retried=%d",
		n, lost, dups, st.Losses, st.RedisErrors)
}

// TestSlowWorkersNoRebalance: workers take 10 ms per record for a minute (on
// the real services; 10 s on the stand-ins). The ingest never waits on them,
// so it stays in its one generation: no rebalance (invariant 6).
func TestSlowWorkersNoRebalance(t *testing.T) {
	run := time.Minute
	if !testenv.RealKafka() {
		run = 10 * time.Second
	}
	e := newEnv(t, 4)
	testenv.Produce(t, e.brokers, e.topic, 0, 30_000)
	cfg := e.config(t)
	cfg.PartitionCap, cfg.LowWatermark = 200, 100
	in := startIngest(t, cfg)
	l := e.startWork(t, 10*time.Millisecond)

	testenv.Eventually(t, 30*time.Second, func() bool { return in.Stats().Rebalances == 1 && len(in.Stats().Partitions) == 4 },
		"the ingest did not join")
	began := time.Now()
	first := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
	for time.Since(began) < run {
		time.Sleep(time.Second)
		if r := in.Stats().Rebalances; r != 1 {
			t.Fatalf("after %v of slow processing: %d generations, want 1 (a rebalance happened)", time.Since(began).Round(time.Second), r)
		}
	}
	last := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
	moved := int64(0)
	for p := range last {
		moved += last[p] - max(first[p], 0)
	}
	if moved <= 0 {
		t.Errorf("commits did not move during slow processing: %v → %v", first, last)
	}
	st := in.Stats()
	t.Logf("slow workers (10 ms/record) for %v: %d processed, commits moved by %d, generations=%d, pauses=%d",
		run, l.total(), moved, st.Rebalances, st.Pauses)
}

// newRedisScenario is the set-up of the tests that do things to a Redis of
// their own: n records in 4 partitions, an ingest (cap 1000), a test worker
// (and, when reclaim is not nil, a reclaimer of entries idle 3 s that holds
// off while *reclaim is true), a commit watch.
func newRedisScenario(t *testing.T, srv *testenv.RedisServer, n int, reclaim *atomic.Bool) (*env, *running, *ledger, *commitWatch) {
	e := newEnv(t, 4)
	e.useRedis(t, srv.Addr())
	testenv.Produce(t, e.brokers, e.topic, 0, n)
	cfg := e.config(t)
	cfg.PartitionCap = 1000
	in := startIngest(t, cfg)
	l := newLedger()
	ctx, cancel := context.WithCancel(context.Background())
	wg := e.work(ctx, t, l, 200*time.Microsecond)
	if reclaim != nil {
		rwg := e.reclaimer(ctx, l, 3*time.Second, reclaim)
		t.Cleanup(rwg.Wait)
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return e, in, l, e.watchCommits(t)
}

// cfgCommitInterval is the commit interval of env.config.
const cfgCommitInterval = 50 * time.Millisecond

func sameOffsets(a, b map[int]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for p, off := range a {
		if b[p] != off {
			return false
		}
	}
	return true
}

// TestKafkaRestart: the broker goes away mid-stream (a clean stop, then a
// start with its data). The ingest retries with backoff and says so, the
// group comes back, and nothing is lost.
func TestKafkaRestart(t *testing.T) {
	const n = 20_000
	broker := testenv.StartKafkaBroker(t)
	// newEnv's topic is on the shared broker; this test uses its own.
	e := newEnv(t, 1)
	e2 := &env{brokers: []string{broker.Addr()}, redis: e.redis, rdb: e.rdb, partitions: 4,
		topic: e.topic, group: e.group, prefix: e.prefix}
	testenv.CreateTopic(t, e2.brokers, e2.topic, 4)
	testenv.Produce(t, e2.brokers, e2.topic, 0, n)
	cfg := e2.config(t)
	cfg.PartitionCap = 1000
	in := startIngest(t, cfg)
	l := e2.startWork(t, 200*time.Microsecond)

	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() >= n/4 }, "processed %d", l.total())
	broker.Stop(t)
	at := l.total()
	errs := in.Stats().KafkaErrors + in.Stats().CommitErrors
	testenv.Eventually(t, 30*time.Second, func() bool { return in.Stats().KafkaErrors+in.Stats().CommitErrors > errs },
		"no Kafka error seen while the broker is down")
	broker.Start(t)
	lost, dups := e2.waitDone(t, l, 3*time.Minute)
	st := in.Stats()
	t.Logf("kafka restarted after %d records: %d records, lost=%d duplicates=%d, generations=%d, kafka errors retried=%d, commit errors=%d",
		at, n, lost, dups, st.Rebalances, st.KafkaErrors, st.CommitErrors)
}
