package main

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kbridge/kbridge/internal/bench"
)

// e2eResult is 10b for one kind of worker.
type e2eResult struct {
	Records     int                      `json:"records"`
	Partitions  int                      `json:"partitions"`
	Size        int                      `json:"size"`
	Workers     string                   `json:"workers"`
	Rate        bench.Summary            `json:"rate"`           // first → last record handled
	RateCommit  bench.Summary            `json:"rate_committed"` // start → every offset committed
	CPU         map[string]bench.Summary `json:"cpu_us_per_record"`
	Cmds        bench.Summary            `json:"redis_cmds_per_record"`
	CmdsByName  map[string]float64       `json:"redis_cmds_by_name"` // per record, last round
	Duplicates  int64                    `json:"duplicates"`
	CPUProcList []string                 `json:"cpu_procs"`
}

// runEndToEnd (10b) runs ingest + 2 worker processes over a produced topic
// until every offset is committed, two kinds of worker interleaved:
// "kbridge worker --http" against a no-op endpoint (kbench sink), and the
// worker library with a no-op Go handler (kbench worker).
func runEndToEnd(e *env) (any, error) {
	const parts, size = 8, 256
	n := pick(e, 200000, 50000)
	topic := e.name("e2e")
	defer e.k.DeleteTopics(e.ctx, topic)
	if err := e.k.CreateTopic(e.ctx, topic, parts); err != nil {
		return nil, err
	}
	if err := e.k.Produce(e.ctx, topic, bench.Partitions(parts), n, size); err != nil {
		return nil, err
	}
	ends, err := e.k.LogEnds(e.ctx, topic, parts)
	if err != nil {
		return nil, err
	}
	kinds := []struct {
		name, workers string
		procs         []string
	}{
		{"http", "2 × `kbridge worker --http --concurrency 32` against a no-op endpoint (`kbench sink`)", []string{"ingest", "worker 1", "worker 2", "redis-server", "sink"}},
		{"library", "2 × `kbench worker --concurrency 32` (the worker library, no-op Go handler)", []string{"ingest", "worker 1", "worker 2", "redis-server"}},
	}
	type acc struct {
		rates, ratesC, cmds []float64
		cpu                 map[string][]float64
		byName              map[string]float64
		dups                int64
	}
	accs := make([]acc, len(kinds))
	for round := range e.rounds {
		for i := range kinds {
			k := (i + round) % len(kinds)
			kind := kinds[k]
			a := &accs[k]
			if a.cpu == nil {
				a.cpu = map[string][]float64{}
			}
			prefix, group := e.name("e"), e.name("g")
			var sink *child
			if kind.name == "http" {
				if sink, err = e.startSink("sink", 0); err != nil {
					return nil, err
				}
			}
			c0, err := bench.CommandCalls(e.ctx, e.rdb)
			if err != nil {
				return nil, err
			}
			redis0, _ := bench.ReadProc(e.redisPid)
			start := time.Now()
			in, err := e.startIngest("ingest", prefix, group, []string{topic})
			if err != nil {
				return nil, err
			}
			var ws []*child
			for j := range 2 {
				var w *child
				if kind.name == "http" {
					w, err = e.startHTTPWorker(fmt.Sprintf("worker%d", j+1), prefix, "http://"+sink.addr+"/", "--concurrency", "32")
				} else {
					w, err = e.startWorker(fmt.Sprintf("worker%d", j+1), prefix, "default=noop", "--concurrency", "32")
				}
				if err != nil {
					return nil, err
				}
				ws = append(ws, w)
			}
			handled := func() counts {
				if sink != nil {
					return sink.counts(e.ctx)
				}
				var c counts
				for _, w := range ws {
					x := w.counts(e.ctx)
					c.Total += x.Total
					c.Dups += x.Dups
				}
				return c
			}
			var t0 time.Time
			var n0 int64
			err = waitFor(e.ctx, 10*time.Minute, 50*time.Millisecond, "every record handled", func() bool {
				c := handled()
				if c.Total > 0 && t0.IsZero() {
					t0, n0 = time.Now(), c.Total
				}
				return c.Total-c.Dups >= int64(n) || in.exited()
			})
			t1 := time.Now()
			if err == nil {
				err = waitFor(e.ctx, 2*time.Minute, 20*time.Millisecond, "every offset committed", func() bool { return e.allCommitted(group, topic, ends) })
			}
			t2 := time.Now()
			if err != nil {
				return nil, err
			}
			per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
			for j, c := range []*child{in, ws[0], ws[1]} {
				a.cpu[kind.procs[j]] = append(a.cpu[kind.procs[j]], per(c.sample().CPU))
			}
			redis1, _ := bench.ReadProc(e.redisPid)
			a.cpu["redis-server"] = append(a.cpu["redis-server"], per(redis1.CPU-redis0.CPU))
			if sink != nil {
				a.cpu["sink"] = append(a.cpu["sink"], per(sink.sample().CPU))
			}
			c1, err := bench.CommandCalls(e.ctx, e.rdb)
			if err != nil {
				return nil, err
			}
			var total int64
			a.byName = map[string]float64{}
			for name, v := range c1 {
				if name == "info" || name == "xlen" { // the benchmark's own
					continue
				}
				if d := v - c0[name]; d > 0 {
					total += d
					a.byName[name] = float64(d) / float64(n)
				}
			}
			a.cmds = append(a.cmds, float64(total)/float64(n))
			rate := float64(int64(n)-n0) / t1.Sub(t0).Seconds()
			a.rates, a.ratesC = append(a.rates, rate), append(a.ratesC, float64(n)/t2.Sub(start).Seconds())
			a.dups += handled().Dups
			e.logf("10b round %d, %s workers: %.0f records/s handled, %.0f/s start→committed; CPU µs/record ingest %.1f, workers %.1f %.1f, redis %.1f; %.2f Redis commands/record",
				round+1, kind.name, rate, a.ratesC[len(a.ratesC)-1], a.cpu["ingest"][len(a.cpu["ingest"])-1], a.cpu["worker 1"][len(a.cpu["worker 1"])-1],
				a.cpu["worker 2"][len(a.cpu["worker 2"])-1], a.cpu["redis-server"][len(a.cpu["redis-server"])-1], float64(total)/float64(n))
			e.stopAll()
			e.cleanRedis(prefix)
		}
	}
	var out []e2eResult
	for k, kind := range kinds {
		a := accs[k]
		r := e2eResult{Records: n, Partitions: parts, Size: size, Workers: kind.workers, CPUProcList: kind.procs,
			Rate: bench.Summarize(a.rates), RateCommit: bench.Summarize(a.ratesC), Cmds: bench.Summarize(a.cmds),
			CmdsByName: a.byName, Duplicates: a.dups, CPU: map[string]bench.Summary{}}
		for p, v := range a.cpu {
			r.CPU[p] = bench.Summarize(v)
		}
		out = append(out, r)
	}
	return out, nil
}

// point is one sample of a time series.
type point struct {
	T         float64 `json:"t"` // seconds from the start
	Backlog   int64   `json:"backlog"`
	Length    int64   `json:"length"`
	Paused    int     `json:"paused"`
	Handled   int64   `json:"handled"`
	Rate      float64 `json:"rate"` // handled per second since the previous point
	UsedMem   int64   `json:"used_memory"`
	IngestRSS int64   `json:"ingest_rss"`
}

// backlogResult is 10c.
type backlogResult struct {
	Records      int     `json:"records"`
	Partitions   int     `json:"partitions"`
	Cap          int     `json:"cap"`
	PeakLength   int64   `json:"peak_length"` // summed stream length
	PeakStream   int64   `json:"peak_stream"` // longest single stream
	PeakUsedMem  int64   `json:"peak_used_memory"`
	BaseUsedMem  int64   `json:"base_used_memory"`
	PeakRSS      int64   `json:"peak_ingest_rss"`
	PausedRSS    []int64 `json:"paused_rss"` // RSS samples while everything is paused
	DrainRate    float64 `json:"drain_rate"` // records/s from workers' start to all committed
	Duplicates   int64   `json:"duplicates"`
	WorkersStart float64 `json:"workers_start_s"`
	Series       []point `json:"series"`
}

func runBacklog(e *env) (any, error) {
	const parts, capacity = 8, 10000
	n := pick(e, 1000000, 150000)
	topic := e.name("backlog")
	defer e.k.DeleteTopics(e.ctx, topic)
	if err := e.k.CreateTopic(e.ctx, topic, parts); err != nil {
		return nil, err
	}
	e.logf("10c: producing %d records", n)
	if err := e.k.Produce(e.ctx, topic, bench.Partitions(parts), n, 100); err != nil {
		return nil, err
	}
	ends, err := e.k.LogEnds(e.ctx, topic, parts)
	if err != nil {
		return nil, err
	}
	r := backlogResult{Records: n, Partitions: parts, Cap: capacity}
	r.BaseUsedMem, _ = bench.InfoInt(e.ctx, e.rdb, "memory", "used_memory")
	prefix, group := e.name("b"), e.name("g")
	defer e.cleanRedis(prefix)
	start := time.Now()
	in, err := e.startIngest("ingest", prefix, group, []string{topic}, "--partition-cap", strconv.Itoa(capacity))
	if err != nil {
		return r, err
	}
	var sink *child
	var prev point
	sample := func() point {
		p := point{T: time.Since(start).Seconds()}
		pipe := e.rdb.Pipeline()
		var hs []func() map[string]string
		for i := range parts {
			c := pipe.HGetAll(e.ctx, streamKey(prefix, topic, i)+":status")
			hs = append(hs, c.Val)
		}
		lens := make([]func() int64, parts)
		for i := range parts {
			lens[i] = pipe.XLen(e.ctx, streamKey(prefix, topic, i)).Val
		}
		_, _ = pipe.Exec(e.ctx)
		for i := range parts {
			h := hs[i]()
			b, _ := strconv.ParseInt(h["backlog"], 10, 64)
			p.Backlog += b
			if h["paused"] == "1" {
				p.Paused++
			}
			l := lens[i]()
			p.Length += l
			r.PeakStream = max(r.PeakStream, l)
		}
		p.UsedMem, _ = bench.InfoInt(e.ctx, e.rdb, "memory", "used_memory")
		p.IngestRSS = in.sample().RSS
		if sink != nil {
			c := sink.counts(e.ctx)
			p.Handled = c.Total
			r.Duplicates = c.Dups
		}
		if len(r.Series) > 0 && p.T > prev.T {
			p.Rate = float64(p.Handled-prev.Handled) / (p.T - prev.T)
		}
		prev = p
		r.Series = append(r.Series, p)
		r.PeakLength, r.PeakUsedMem, r.PeakRSS = max(r.PeakLength, p.Length), max(r.PeakUsedMem, p.UsedMem), max(r.PeakRSS, p.IngestRSS)
		return p
	}
	// Phase 1: the ingest alone fills every stream to its cap and pauses.
	allPaused := time.Time{}
	err = waitFor(e.ctx, 5*time.Minute, 500*time.Millisecond, "every partition paused", func() bool {
		p := sample()
		if p.Paused == parts && allPaused.IsZero() {
			allPaused = time.Now()
		}
		if !allPaused.IsZero() {
			r.PausedRSS = append(r.PausedRSS, p.IngestRSS)
		}
		return in.exited() || !allPaused.IsZero() && time.Since(allPaused) >= pick(e, 10*time.Second, 5*time.Second)
	})
	if err != nil {
		return r, err
	}
	// Phase 2: two workers drain it.
	sink, err = e.startSink("sink", 0)
	if err != nil {
		return r, err
	}
	r.WorkersStart = time.Since(start).Seconds()
	t0 := time.Now()
	for i := range 2 {
		if _, err := e.startHTTPWorker(fmt.Sprintf("worker%d", i+1), prefix, "http://"+sink.addr+"/", "--concurrency", "32"); err != nil {
			return r, err
		}
	}
	err = waitFor(e.ctx, 30*time.Minute, 500*time.Millisecond, "every offset committed", func() bool {
		p := sample()
		if int(p.T)%10 == 0 && len(r.Series)%20 == 0 {
			e.logf("10c: t=%.0fs handled %d, backlog %d, paused %d, RSS %d MiB", p.T, p.Handled, p.Backlog, p.Paused, p.IngestRSS>>20)
		}
		return in.exited() || p.Handled >= int64(n) && e.allCommitted(group, topic, ends)
	})
	if err != nil {
		return r, err
	}
	r.DrainRate = float64(n) / time.Since(t0).Seconds()
	e.logf("10c: drained %d records at %.0f/s; peak stream length %d (one stream %d), peak used_memory %d MiB, peak ingest RSS %d MiB",
		n, r.DrainRate, r.PeakLength, r.PeakStream, r.PeakUsedMem>>20, r.PeakRSS>>20)
	return r, nil
}

// manyResult is 10d.
type manyResult struct {
	Partitions    int     `json:"partitions"`
	Window        float64 `json:"window_s"`
	RedisBase     float64 `json:"redis_base"` // Redis CPU share before the ingest started
	IngestIdle    float64 `json:"ingest_idle"`
	RedisIdle     float64 `json:"redis_idle"`
	SetupSeconds  float64 `json:"setup_s"` // ingest start → every partition's status published
	PerPartition  int     `json:"per_partition"`
	Size          int     `json:"size"`
	Cap           int     `json:"cap"`
	PeakRSS       int64   `json:"peak_rss"`
	IdleRSS       int64   `json:"idle_rss"`
	BacklogInKafk int64   `json:"backlog_bytes"`
	Appended      int64   `json:"appended"`
	Profile       string  `json:"profile,omitempty"`
}

func runManyPartitions(e *env) (any, error) {
	const parts = 1000
	r := manyResult{Partitions: parts, Window: pick(e, 30.0, 15.0), PerPartition: pick(e, 300, 100), Size: 1024, Cap: 200}
	win := time.Duration(r.Window * float64(time.Second))
	topic := e.name("many")
	defer e.k.DeleteTopics(e.ctx, topic)
	if err := e.k.CreateTopic(e.ctx, topic, parts); err != nil {
		return nil, err
	}
	a, _ := bench.ReadProc(e.redisPid)
	sleepCtx(e.ctx, win/3)
	b, _ := bench.ReadProc(e.redisPid)
	r.RedisBase = bench.CPUShare(a, b)

	// Idle: no record at all.
	prefix, group := e.name("m"), e.name("g")
	defer e.cleanRedis(prefix)
	start := time.Now()
	in, err := e.startIngest("ingest", prefix, group, []string{topic}, "--partition-cap", strconv.Itoa(r.Cap))
	if err != nil {
		return r, err
	}
	if err := e.waitStatuses(in, prefix, topic, parts); err != nil {
		return r, err
	}
	r.SetupSeconds = time.Since(start).Seconds()
	sleepCtx(e.ctx, 10*time.Second)
	i0, _ := bench.ReadProc(in.pid())
	a, _ = bench.ReadProc(e.redisPid)
	sleepCtx(e.ctx, win)
	i1, _ := bench.ReadProc(in.pid())
	b, _ = bench.ReadProc(e.redisPid)
	r.IngestIdle, r.RedisIdle, r.IdleRSS = bench.CPUShare(i0, i1), bench.CPUShare(a, b), i1.RSS
	e.logf("10d: %d idle partitions: ingest %.1f%% of a core, Redis %.1f%% (%.1f%% before the ingest); ingest RSS %d MiB",
		parts, 100*r.IngestIdle, 100*r.RedisIdle, 100*r.RedisBase, r.IdleRSS>>20)
	in.stop()
	e.cleanRedis(prefix)
	if r.IngestIdle > 0.03 {
		r.Profile = e.profilePath("10d-ingest-idle-1000-partitions.txt")
		if err := e.profileIdle(topic, parts, win, r.Profile); err != nil {
			e.logf("10d: profile: %v", err)
			r.Profile = ""
		}
	}

	// A backlog on every partition, larger than the cap: a fresh ingest.
	prefix, group = e.name("m"), e.name("g")
	defer e.cleanRedis(prefix)
	in, err = e.startIngest("ingest", prefix, group, []string{topic}, "--partition-cap", strconv.Itoa(r.Cap))
	if err != nil {
		return r, err
	}
	if err := e.waitStatuses(in, prefix, topic, parts); err != nil {
		return r, err
	}
	done := make(chan error, 1)
	go func() { done <- e.k.Produce(e.ctx, topic, bench.Partitions(parts), parts*r.PerPartition, r.Size) }()
	r.BacklogInKafk = int64(parts * r.PerPartition * r.Size)
	var produced time.Time
	err = waitFor(e.ctx, 10*time.Minute, 250*time.Millisecond, "the backlog phase", func() bool {
		r.PeakRSS = max(r.PeakRSS, in.sample().RSS)
		select {
		case err := <-done:
			if err != nil {
				e.logf("10d: produce: %v", err)
			}
			produced = time.Now()
		default:
		}
		return in.exited() || !produced.IsZero() && time.Since(produced) > win
	})
	if err != nil {
		return r, err
	}
	r.Appended = e.xlenSum(prefix, topic, parts)
	e.logf("10d: backlog of %d × %d records of %d B: peak ingest RSS %d MiB, %d entries in Redis", parts, r.PerPartition, r.Size, r.PeakRSS>>20, r.Appended)
	in.stop()
	return r, nil
}

// waitStatuses waits until the ingest published the status hash of every
// partition (each partition set up).
func (e *env) waitStatuses(in *child, prefix, topic string, parts int) error {
	return waitFor(e.ctx, 10*time.Minute, time.Second, "every partition's status", func() bool {
		pipe := e.rdb.Pipeline()
		var cs []func() int64
		for p := range parts {
			cs = append(cs, pipe.Exists(e.ctx, streamKey(prefix, topic, p)+":status").Val)
		}
		_, _ = pipe.Exec(e.ctx)
		for _, c := range cs {
			if c() == 0 {
				return in.exited()
			}
		}
		return true
	})
}

// profileIdle runs kbench ingest (the library, bridge.Config defaults) on
// the idle topic with a new group, waits until every partition is set up,
// and profiles the window after.
func (e *env) profileIdle(topic string, parts int, window time.Duration, out string) error {
	prefix, group := e.name("p"), e.name("g")
	defer e.cleanRedis(prefix)
	prof := out + ".pprof"
	c, err := e.start("ingest-prof", e.self, "ingest", "--brokers", e.brokers[0], "--redis", e.redisAddr,
		"--prefix", prefix, "--group", group, "--topics", topic, "--cpuprofile", prof, "--profile-on-sigusr1")
	if err != nil {
		return err
	}
	if err := e.waitStatuses(c, prefix, topic, parts); err != nil {
		c.stop()
		return err
	}
	sleepCtx(e.ctx, 10*time.Second)
	_ = c.cmd.Process.Signal(syscall.SIGUSR1)
	sleepCtx(e.ctx, window)
	c.stop()
	return e.pprofTop(prof, out)
}

// rebalanceResult is 10e.
type rebalanceResult struct {
	Records    int           `json:"records"`
	Partitions int           `json:"partitions"`
	Handler    string        `json:"handler"`
	Steady     bench.Summary `json:"steady"`     // records/s before the second ingest
	During     bench.Summary `json:"during"`     // records/s while it joins
	Ratio      bench.Summary `json:"ratio"`      // during / steady per round
	JoinSecs   bench.Summary `json:"join_s"`     // second ingest start → its partitions assigned
	Duplicates int64         `json:"duplicates"` // records handled twice, all rounds
	Window     float64       `json:"window_s"`
	Series     [][]float64   `json:"series"` // last round: [t, records/s] per second, t=0 at the join
}

func runRebalance(e *env) (any, error) {
	const parts = 8
	n := pick(e, 400000, 150000)
	topic := e.name("rebal")
	defer e.k.DeleteTopics(e.ctx, topic)
	if err := e.k.CreateTopic(e.ctx, topic, parts); err != nil {
		return nil, err
	}
	if err := e.k.Produce(e.ctx, topic, bench.Partitions(parts), n, 100); err != nil {
		return nil, err
	}
	steadyWin, duringWin := pick(e, 10*time.Second, 6*time.Second), pick(e, 15*time.Second, 10*time.Second)
	r := rebalanceResult{Records: n, Partitions: parts, Window: duringWin.Seconds(),
		Handler: "2 × kbridge worker --http --concurrency 8, endpoint sleeps 2 ms"}
	var steady, during, ratio, joins []float64
	for round := range e.rounds {
		prefix, group := e.name("rb"), e.name("g")
		sink, err := e.startSink("sink", 2*time.Millisecond)
		if err != nil {
			return r, err
		}
		a, err := e.startIngest("ingestA", prefix, group, []string{topic})
		if err != nil {
			return r, err
		}
		for i := range 2 {
			if _, err := e.startHTTPWorker(fmt.Sprintf("worker%d", i+1), prefix, "http://"+sink.addr+"/", "--concurrency", "8"); err != nil {
				return r, err
			}
		}
		if err := waitFor(e.ctx, 5*time.Minute, 50*time.Millisecond, "the first record", func() bool { return sink.counts(e.ctx).Total > 0 }); err != nil {
			return r, err
		}
		sleepCtx(e.ctx, 5*time.Second)
		c0, t0 := sink.counts(e.ctx), time.Now()
		sleepCtx(e.ctx, steadyWin)
		c1, t1 := sink.counts(e.ctx), time.Now()
		b, err := e.startIngest("ingestB", prefix, group, []string{topic})
		if err != nil {
			return r, err
		}
		var series [][]float64
		last, lastT := c1, t1
		for time.Since(t1) < duringWin && e.ctx.Err() == nil {
			sleepCtx(e.ctx, time.Second)
			c, t := sink.counts(e.ctx), time.Now()
			series = append(series, []float64{t.Sub(t1).Seconds(), float64(c.Total-last.Total) / t.Sub(lastT).Seconds()})
			last, lastT = c, t
		}
		c2, t2 := last, lastT
		s := float64(c1.Total-c0.Total) / t1.Sub(t0).Seconds()
		d := float64(c2.Total-c1.Total) / t2.Sub(t1).Seconds()
		join := joinedAfter(b.log, t1)
		r.Series = series
		r.Duplicates += c2.Dups
		if c2.Total >= int64(n) {
			e.logf("10e: WARNING: the backlog ran out during the window")
		}
		e.logf("10e round %d: steady %.0f/s, during the join %.0f/s: ratio %.2f; second ingest assigned after %.1fs; %d duplicates",
			round+1, s, d, d/s, join, c2.Dups)
		steady, during, ratio, joins = append(steady, s), append(during, d), append(ratio, d/s), append(joins, join)
		e.stopAll()
		_ = a
		e.cleanRedis(prefix)
	}
	r.Steady, r.During, r.Ratio, r.JoinSecs = bench.Summarize(steady), bench.Summarize(during), bench.Summarize(ratio), bench.Summarize(joins)
	return r, nil
}

// joinedAfter reads an ingest's JSON log for its first "partition assigned"
// and returns the seconds from t to it (NaN if none).
func joinedAfter(logPath string, t time.Time) float64 {
	b, err := readFile(logPath)
	if err != nil {
		return nan()
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, `"partition assigned"`) {
			continue
		}
		i := strings.Index(line, `"time":"`)
		if i < 0 {
			continue
		}
		ts := line[i+8:]
		ts = ts[:strings.IndexByte(ts, '"')]
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err == nil {
			return at.Sub(t).Seconds()
		}
	}
	return nan()
}

// lagResult is 10f.
type lagResult struct {
	Partitions     int     `json:"partitions"`
	Rate           int     `json:"rate"`
	Seconds        float64 `json:"seconds"`
	CommitInterval float64 `json:"commit_interval_s"`
	Offsets        int     `json:"offsets"`
	P50            float64 `json:"p50_s"`
	P90            float64 `json:"p90_s"`
	P99            float64 `json:"p99_s"`
	Max            float64 `json:"max_s"`
	Target         float64 `json:"target_s"`
	PollMs         float64 `json:"poll_ms"`
}

func percentiles(v []float64) (p50, p90, p99, mx float64) {
	s := slices.Clone(v)
	sort.Float64s(s)
	return bench.Percentile(s, 50), bench.Percentile(s, 90), bench.Percentile(s, 99), s[len(s)-1]
}
