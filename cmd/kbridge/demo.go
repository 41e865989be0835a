package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/urfave/cli/v2"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/wire"
	"github.com/kbridge/kbridge/worker"
)

// demoCommand is "kbridge demo": the whole pipeline in one process, on
// embedded stand-ins unless --brokers/--redis-url name real services.
func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "run the whole pipeline in one process (in-process Kafka and Redis: nothing to install) and check every record",
		Description: `Starts an in-process Kafka broker and an in-process Redis on loopback, creates a
topic of orders, and runs an ingest and several workers with simulated
processing time, through three phases:

  1. steady  the workers keep up: the backlog stays small, commits follow
  2. slow    the workers slow down: the backlog grows to --partition-cap and
             the ingest pauses the partitions (it stops fetching, never trims)
  3. burst   a burst of orders with fast workers: partitions pause and resume
             as the workers drain the streams

then waits until every order was processed and committed. A progress line every
second shows the rate, the backlog, the paused partitions and the commit lag
(log end - committed). A ledger counts every order id the workers processed;
the last line is

  produced=N processed=N lost=0 duplicates=D

and the exit status is 0 only if nothing was lost. It ends by itself in about
half a minute. --brokers and --redis-url run it on real services instead (on a
fresh topic and key prefix, deleted at the end unless --keep). It runs on one
Redis: --redis-cluster, --prefix, --redis-password-file and --redis-tls-* are
refused (exit 2), as are --log-level/--log-format without --verbose and --keep
without a real service, rather than ignored.

Examples:
   kbridge demo
   kbridge demo --json
   kbridge demo --workers 5 --phase 10s
   kbridge demo --brokers 127.0.0.1:9092 --redis-url redis://127.0.0.1:6379/0`,
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "brokers", EnvVars: []string{"KBRIDGE_DEMO_BROKERS"}, Usage: "use this real Kafka instead of the in-process broker"},
			&cli.StringFlag{Name: "redis-url", EnvVars: []string{"KBRIDGE_DEMO_REDIS_URL"}, Usage: "use this real Redis (redis://host:port/db) instead of the in-process one"},
			&cli.IntFlag{Name: "partitions", Value: 4, EnvVars: []string{"KBRIDGE_DEMO_PARTITIONS"}, Usage: "partitions of the demo topic"},
			&cli.IntFlag{Name: "workers", Value: 3, EnvVars: []string{"KBRIDGE_DEMO_WORKERS"}, Usage: "worker processes (in-process), 4 handlers each"},
			&cli.Float64Flag{Name: "rate", Value: 500, EnvVars: []string{"KBRIDGE_DEMO_RATE"}, Usage: "orders produced per second (the burst adds 10 seconds' worth at once)"},
			&cli.Int64Flag{Name: "partition-cap", Value: 200, EnvVars: []string{"KBRIDGE_DEMO_PARTITION_CAP"}, Usage: "backlog per stream at which the ingest pauses a partition"},
			&cli.DurationFlag{Name: "phase", Value: 7 * time.Second, EnvVars: []string{"KBRIDGE_DEMO_PHASE"}, Usage: "duration of each of the three phases"},
			&cli.BoolFlag{Name: "json", EnvVars: []string{"KBRIDGE_DEMO_JSON"}, Usage: "print the summary as JSON (progress still goes to stderr)"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, EnvVars: []string{"KBRIDGE_DEMO_QUIET"}, Usage: "no progress lines"},
			&cli.BoolFlag{Name: "verbose", EnvVars: []string{"KBRIDGE_DEMO_VERBOSE"}, Usage: "show the ingest's and workers' logs (at --log-level)"},
			&cli.BoolFlag{Name: "keep", EnvVars: []string{"KBRIDGE_DEMO_KEEP"}, Usage: "on real services, keep the demo topic and Redis keys"},
		},
		Action: runDemo,
	}
}

// demoSummary is the demo's result; --json prints it.
type demoSummary struct {
	Produced   int64 `json:"produced"`
	Processed  int64 `json:"processed"` // distinct orders processed
	Lost       int64 `json:"lost"`
	Duplicates int64 `json:"duplicates"` // handler runs beyond the first, per order

	Seconds        float64 `json:"seconds"`
	Kafka          string  `json:"kafka"`
	Redis          string  `json:"redis"`
	Topic          string  `json:"topic"`
	Partitions     int     `json:"partitions"`
	Workers        int     `json:"workers"`
	LogEnd         int64   `json:"log_end"`   // summed over partitions
	Committed      int64   `json:"committed"` // summed over partitions at the end
	Commits        int64   `json:"commits"`
	Pauses         int64   `json:"pauses"`
	MaxPaused      int     `json:"max_paused_partitions"`
	MaxBacklog     int64   `json:"max_backlog"`
	PartitionCap   int64   `json:"partition_cap"`
	DupAppends     int64   `json:"duplicate_appends_rejected"`
	LostIDs        []int64 `json:"lost_ids,omitempty"`
	CommitsAtEnd   bool    `json:"commits_at_log_end"`
	OK             bool    `json:"ok"`
	FailureMessage string  `json:"error,omitempty"`
}

type demoOptions struct {
	brokers    []string
	redisURL   string
	partitions int
	workers    int
	rate       float64
	cap        int64
	phase      time.Duration
	keep       bool
}

func demoConfig(c *cli.Context) (demoOptions, error) {
	o := demoOptions{
		brokers: splitList(c.StringSlice("brokers")), redisURL: c.String("redis-url"),
		partitions: c.Int("partitions"), workers: c.Int("workers"), rate: c.Float64("rate"),
		cap: c.Int64("partition-cap"), phase: c.Duration("phase"), keep: c.Bool("keep"),
	}
	var probs []string
	if c.NArg() > 0 {
		probs = append(probs, fmt.Sprintf("demo takes no arguments, got %q", c.Args().Slice()))
	}
	if o.partitions < 1 || o.partitions > 64 {
		probs = append(probs, fmt.Sprintf("--partitions %d must be between 1 and 64", o.partitions))
	}
	if o.workers < 1 || o.workers > 64 {
		probs = append(probs, fmt.Sprintf("--workers %d must be between 1 and 64", o.workers))
	}
	if o.rate <= 0 || o.rate > 100000 {
		probs = append(probs, fmt.Sprintf("--rate %v must be above 0 and at most 100000", o.rate))
	}
	if o.cap < 2 {
		probs = append(probs, fmt.Sprintf("--partition-cap %d must be at least 2", o.cap))
	}
	if o.phase < 500*time.Millisecond || o.phase > 10*time.Minute {
		probs = append(probs, fmt.Sprintf("--phase %v must be between 500ms and 10m", o.phase))
	}
	probs = append(probs, redisFlagsNotTakenText(c, "the demo uses its own --redis-url as it is (rediss:// with the system's CAs; a password inside it, best in KBRIDGE_DEMO_REDIS_URL)")...)
	// The global flags the demo cannot honour are refused, not ignored: a
	// user who asked for a cluster or a prefix must not believe the demo
	// ran on them.
	if c.IsSet("redis-cluster") {
		probs = append(probs, "--redis-cluster is not taken here: the demo runs on one Redis (in-process, or --redis-url); "+
			"to try a Redis Cluster, run \"kbridge ingest\" and \"kbridge worker\" with --redis-cluster")
	}
	if c.IsSet("prefix") {
		probs = append(probs, "--prefix is not taken here: the demo uses a key prefix of its own, fresh on real services (kbridge-demo-<random>, deleted at the end unless --keep), so that it never touches other keys")
	}
	if !c.Bool("verbose") {
		for _, f := range []string{"log-level", "log-format"} {
			if c.IsSet(f) {
				probs = append(probs, fmt.Sprintf("--%s goes with --verbose: without it the demo shows no logs", f))
			}
		}
	} else if _, err := newLogger(c); err != nil {
		probs = append(probs, err.Error())
	}
	if o.keep && len(o.brokers) == 0 && o.redisURL == "" {
		probs = append(probs, "--keep goes with --brokers or --redis-url: the in-process Kafka and Redis end with the demo")
	}
	if o.redisURL != "" {
		if _, err := redis.ParseURL(o.redisURL); err != nil {
			probs = append(probs, urlProblem("--redis-url", o.redisURL, err))
		}
	}
	if len(probs) > 0 {
		return o, cli.Exit("invalid demo options:\n  - "+strings.Join(probs, "\n  - "), 2)
	}
	return o, nil
}

func runDemo(c *cli.Context) error {
	o, err := demoConfig(c)
	if err != nil {
		return err
	}
	log := slog.New(slog.DiscardHandler)
	if c.Bool("verbose") {
		if log, err = newLogger(c); err != nil {
			return err
		}
	}
	ctx, stop := signalContext(log, nil)
	defer stop()
	var progress io.Writer = c.App.ErrWriter
	if c.Bool("quiet") {
		progress = io.Discard
	}
	sum, err := runDemoPipeline(ctx, o, log, progress)
	if err != nil {
		return cli.Exit("demo: "+err.Error(), 1)
	}
	out := c.App.Writer
	if c.Bool("json") {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		_ = enc.Encode(sum)
	} else {
		printDemoSummary(out, sum)
	}
	if !sum.OK {
		return cli.Exit("", 1)
	}
	return nil
}

func printDemoSummary(w io.Writer, s demoSummary) {
	fmt.Fprintf(w, "\nsummary: %d orders produced in %.1fs to %d partitions, processed by %d workers\n",
		s.Produced, s.Seconds, s.Partitions, s.Workers)
	fmt.Fprintf(w, "  backpressure: %d pauses, up to %d/%d partitions paused at once; backlog peaked at %d (cap %d per partition)\n",
		s.Pauses, s.MaxPaused, s.Partitions, s.MaxBacklog, s.PartitionCap)
	at := "= log end on every partition"
	if !s.CommitsAtEnd {
		at = "BEHIND the log end"
	}
	fmt.Fprintf(w, "  kafka: %d commits; committed offsets %d %s (%d)\n", s.Commits, s.Committed, at, s.LogEnd)
	fmt.Fprintf(w, "  ledger: %d distinct order ids processed of %d produced; %d lost; %d processed more than once\n",
		s.Processed, s.Produced, s.Lost, s.Duplicates)
	if s.FailureMessage != "" {
		fmt.Fprintf(w, "  FAILED: %s\n", s.FailureMessage)
	}
	fmt.Fprintf(w, "produced=%d processed=%d lost=%d duplicates=%d\n", s.Produced, s.Processed, s.Lost, s.Duplicates)
}

// ledger counts handler successes per order id.
type ledger struct {
	mu     sync.Mutex
	counts []int32
	runs   atomic.Int64
}

func (l *ledger) record(id int64) {
	l.runs.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	for int64(len(l.counts)) <= id {
		l.counts = append(l.counts, 0)
	}
	l.counts[id]++
}

// check compares the ledger with the produced ids 0..produced-1.
func (l *ledger) check(produced int64) (processed, lost, dups int64, lostIDs []int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id := range produced {
		n := int32(0)
		if id < int64(len(l.counts)) {
			n = l.counts[id]
		}
		if n == 0 {
			lost++
			if len(lostIDs) < 20 {
				lostIDs = append(lostIDs, id)
			}
			continue
		}
		processed++
		dups += int64(n - 1)
	}
	for id := produced; id < int64(len(l.counts)); id++ {
		dups += int64(l.counts[id]) // processed but never acknowledged by Kafka: cannot happen
	}
	return processed, lost, dups, lostIDs
}

func (l *ledger) distinct() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n int64
	for _, c := range l.counts {
		if c > 0 {
			n++
		}
	}
	return n
}

// runDemoPipeline runs the demo and returns its summary; an error means the
// demo could not run at all.
func runDemoPipeline(ctx context.Context, o demoOptions, log *slog.Logger, progress io.Writer) (demoSummary, error) {
	start := time.Now()
	suffix := randomHex(4)
	sum := demoSummary{Topic: "orders", Partitions: o.partitions, Workers: o.workers, PartitionCap: o.cap}
	prefix, group := "kbridge-demo", "kbridge-demo"
	onReal := len(o.brokers) > 0 || o.redisURL != ""
	if onReal {
		// A fresh topic, group and prefix: the demo never touches anything else.
		sum.Topic = "kbridge-demo-" + suffix
		prefix, group = sum.Topic, sum.Topic
	}

	// Kafka: the real one, or an in-process broker speaking the protocol.
	brokers := o.brokers
	sum.Kafka = strings.Join(brokers, ",")
	if len(brokers) == 0 {
		kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(500*time.Millisecond))
		if err != nil {
			return sum, fmt.Errorf("start the in-process Kafka broker: %w", err)
		}
		defer kc.Close()
		brokers = kc.ListenAddrs()
		sum.Kafka = "in-process broker (kfake) at " + strings.Join(brokers, ",")
	}
	// Redis: the real one, or miniredis.
	var rdb *redis.Client
	if o.redisURL != "" {
		opt, err := redis.ParseURL(o.redisURL)
		if err != nil {
			return sum, err
		}
		rdb = redis.NewClient(opt)
		sum.Redis = redactURL(o.redisURL)
	} else {
		mr, err := miniredis.Run()
		if err != nil {
			return sum, fmt.Errorf("start the in-process Redis: %w", err)
		}
		defer mr.Close()
		rdb = redis.NewClient(&redis.Options{Addr: mr.Addr(), PoolSize: 64})
		sum.Redis = "in-process Redis (miniredis) at redis://" + mr.Addr()
	}
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return sum, fmt.Errorf("redis %s: %w", sum.Redis, err)
	}
	if err := ensureTopic(ctx, brokers, nil, sum.Topic, o.partitions, 1); err != nil {
		return sum, err
	}
	if onReal && !o.keep {
		defer demoCleanup(brokers, rdb, prefix, sum.Topic, o.partitions)
	}

	p := func(format string, args ...any) { fmt.Fprintf(progress, format+"\n", args...) }
	p("kbridge demo: Kafka topic %q (%d partitions) → ingest → Redis streams → %d workers", sum.Topic, o.partitions, o.workers)
	p("  kafka: %s", sum.Kafka)
	p("  redis: %s", sum.Redis)
	p("  watch it from another terminal while it runs:")
	p("    kbridge --redis-url %s --prefix %s status --watch --brokers %s --group %s",
		strings.TrimPrefix(sum.Redis, "in-process Redis (miniredis) at "), prefix, strings.Join(brokers, ","), group)

	// The ingest.
	in, err := bridge.New(bridge.Config{
		Brokers: brokers, Topics: []string{sum.Topic}, Group: group, Redis: rdb, Prefix: prefix,
		PartitionCap: o.cap, LowWatermark: o.cap / 2, CommitInterval: 250 * time.Millisecond,
		FetchMaxWait: 100 * time.Millisecond, SessionTimeout: 6 * time.Second, RebalanceTimeout: 15 * time.Second,
		HeartbeatInterval: time.Second, AllowEviction: true, Logger: log,
	})
	if err != nil {
		return sum, err
	}
	runCtx, stopAll := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAll()
	var wg sync.WaitGroup
	ingestDone := make(chan error, 1)
	wg.Add(1)
	go func() { defer wg.Done(); ingestDone <- in.Run(runCtx) }()

	// The workers: simulated processing time, a ledger of every order id.
	var book ledger
	var latency atomic.Int64 // nanoseconds per order, jittered ±50%
	latency.Store(int64(2 * time.Millisecond))
	handler := func(ctx context.Context, m *worker.Message) error {
		id, ok := orderID(m.Value)
		if !ok {
			return worker.Permanent(fmt.Errorf("not a demo order: %q", m.Value))
		}
		d := time.Duration(latency.Load())
		d = d/2 + time.Duration(mrand.Int64N(int64(d)+1))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
		book.record(id)
		return nil
	}
	workers := make([]*worker.Worker, o.workers)
	workerCtx, stopWorkers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWorkers()
	var wwg sync.WaitGroup
	for i := range workers {
		w, err := worker.New(worker.Config{
			Redis: rdb, Handler: handler, Prefix: prefix, Consumer: fmt.Sprintf("demo-worker-%d", i+1),
			Concurrency: 4, VisibilityTimeout: 5 * time.Second, BlockTimeout: 200 * time.Millisecond,
			DiscoveryInterval: 250 * time.Millisecond, ShutdownTimeout: 5 * time.Second,
			BackoffMin: 100 * time.Millisecond, Logger: log,
		})
		if err != nil {
			stopAll()
			return sum, err
		}
		workers[i] = w
		wwg.Add(1)
		go func() { defer wwg.Done(); _ = w.Run(workerCtx) }()
	}

	// The producer, through the phases.
	var produced atomic.Int64
	prodErr := make(chan error, 1)
	phase := atomic.Value{}
	phase.Store("steady")
	prodCtx, stopProducing := context.WithCancel(ctx)
	defer stopProducing()
	go func() {
		prodErr <- demoProduce(prodCtx, brokers, sum.Topic, o, &produced, &latency, &phase, p)
	}()

	// Progress, every second, until the producer is done and everything is
	// processed and committed.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var lastDone int64
	lastT := time.Now()
	producing := true
	drainDeadline := time.Time{}
	for {
		select {
		case <-ctx.Done():
			sum.FailureMessage = "interrupted"
		case err := <-prodErr:
			producing = false
			if err != nil && ctx.Err() == nil {
				stopAll()
				stopWorkers()
				wwg.Wait()
				wg.Wait()
				return sum, err
			}
			phase.Store("drain")
			drainDeadline = time.Now().Add(max(20*time.Second, o.phase*2))
			p("── drain: production stopped at %d orders; waiting until every one is processed and committed", produced.Load())
			continue
		case <-tick.C:
		}
		if sum.FailureMessage != "" {
			break
		}
		st := in.Stats()
		done := book.runs.Load()
		now := time.Now()
		rate := float64(done-lastDone) / now.Sub(lastT).Seconds()
		lastDone, lastT = done, now
		paused, lag, committed, logEnd := 0, int64(0), int64(0), int64(0)
		for _, ps := range st.Partitions {
			if ps.Paused {
				paused++
			}
			lag += ps.Lag()
			committed += max(ps.Committed, 0)
			logEnd += max(ps.LogEnd, 0)
		}
		sum.MaxPaused = max(sum.MaxPaused, paused)
		sum.MaxBacklog = max(sum.MaxBacklog, st.Backlog)
		p("%5.1fs %-6s produced %6d  processed %6d  %5.0f/s  backlog %5d  paused %d/%d  commit lag %5d",
			now.Sub(start).Seconds(), phase.Load(), produced.Load(), done, rate, st.Backlog, paused, o.partitions, lag)
		if producing {
			continue
		}
		n := produced.Load()
		if book.distinct() >= n && len(st.Partitions) == o.partitions && committed == n && logEnd == n {
			break
		}
		if time.Now().After(drainDeadline) {
			sum.FailureMessage = "not everything was processed and committed within the drain time"
			break
		}
	}
	stopProducing()
	if producing {
		<-prodErr
	}

	// Shut down in order: workers finish and acknowledge, then the ingest
	// commits what they acknowledged and leaves the group.
	stopWorkers()
	wwg.Wait()
	stopAll()
	wg.Wait()
	if err := <-ingestDone; err != nil {
		return sum, fmt.Errorf("ingest: %w", err)
	}

	st := in.Stats()
	sum.Seconds = time.Since(start).Seconds()
	sum.Produced = produced.Load()
	sum.Processed, sum.Lost, sum.Duplicates, sum.LostIDs = book.check(sum.Produced)
	sum.Commits, sum.Pauses, sum.DupAppends = st.Commits, st.Pauses, st.DuplicatesSkipped
	if logEnd, committed, err := demoOffsets(brokers, group, sum.Topic, o.partitions); err != nil {
		sum.FailureMessage = strings.TrimPrefix(sum.FailureMessage+"; ", "; ") + "reading Kafka offsets: " + err.Error()
	} else {
		sum.LogEnd, sum.Committed = logEnd, committed
		sum.CommitsAtEnd = logEnd == committed
	}
	if sum.LogEnd != sum.Produced && sum.FailureMessage == "" {
		sum.FailureMessage = fmt.Sprintf("Kafka holds %d records, the producer wrote %d", sum.LogEnd, sum.Produced)
	}
	sum.OK = sum.Lost == 0 && sum.CommitsAtEnd && sum.FailureMessage == ""
	return sum, nil
}

// demoProduce writes orders through the phases: steady at o.rate, slow
// workers at o.rate, then a burst of 10 s worth at once followed by o.rate.
func demoProduce(ctx context.Context, brokers []string, topic string, o demoOptions,
	produced, latency *atomic.Int64, phase *atomic.Value, p func(string, ...any)) error {
	opts := produceOptions{brokers: brokers, topic: topic, rate: o.rate, size: 200, keys: 10000, batch: 500}
	run := func(name string, d time.Duration, lat time.Duration, burst int64, say string) error {
		phase.Store(name)
		latency.Store(int64(lat))
		p("── %s", say)
		if burst > 0 {
			bo := opts
			bo.rate, bo.count = 0, burst
			base := produced.Load()
			if _, _, err := produce(ctx, bo, base, func(n int64) { produced.Store(base + n) }); err != nil {
				return err
			}
		}
		po := opts
		po.duration = d
		base := produced.Load()
		_, _, err := produce(ctx, po, base, func(n int64) { produced.Store(base + n) })
		return err
	}
	if err := run("steady", o.phase, 2*time.Millisecond, 0,
		fmt.Sprintf("phase 1/3 steady: %.0f orders/s, workers take ~2ms each: they keep up", o.rate)); err != nil {
		return err
	}
	slow := time.Duration(float64(o.workers*4) / (o.rate / 2) * float64(time.Second)) // the workers manage half the rate
	if err := run("slow", o.phase, slow, 0,
		fmt.Sprintf("phase 2/3 slow: workers now take ~%v per order; the backlog grows to the cap (%d per partition) and the ingest pauses fetching", slow.Round(time.Millisecond), o.cap)); err != nil {
		return err
	}
	burst := int64(o.rate * 10)
	return run("burst", o.phase, 2*time.Millisecond, burst,
		fmt.Sprintf("phase 3/3 burst: %d orders at once, fast workers; partitions pause at the cap and resume below %d as the workers drain them", burst, o.cap/2))
}

// demoOffsets returns the summed log end and committed offsets of topic.
func demoOffsets(brokers []string, group, topic string, partitions int) (logEnd, committed int64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	ps := make([]int, partitions)
	reqs := make([]kafka.OffsetRequest, partitions)
	for i := range ps {
		ps[i], reqs[i] = i, kafka.LastOffsetOf(i)
	}
	lo, err := cl.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return 0, 0, err
	}
	for _, p := range lo.Topics[topic] {
		if p.Error != nil {
			return 0, 0, p.Error
		}
		logEnd += p.LastOffset
	}
	of, err := cl.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ps}})
	if err != nil {
		return 0, 0, err
	}
	if of.Error != nil {
		return 0, 0, of.Error
	}
	for _, p := range of.Topics[topic] {
		if p.Error != nil {
			return 0, 0, p.Error
		}
		committed += max(p.CommittedOffset, 0)
	}
	return logEnd, committed, nil
}

// demoCleanup deletes what a demo on real services created.
func demoCleanup(brokers []string, rdb redis.UniversalClient, prefix, topic string, partitions int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	keys := []string{wire.RegistryKey(prefix)}
	for i := range partitions {
		s := wire.StreamKey(prefix, topic, i)
		keys = append(keys, s, wire.StatusKey(s), wire.DLQKey(s), wire.ReplayKey(s))
	}
	for _, k := range keys { // one by one: a Redis Cluster refuses cross-slot DEL
		_ = rdb.Del(ctx, k).Err()
	}
	cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	_, _ = cl.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{topic}})
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
