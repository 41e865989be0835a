package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/internal/kfetch"
	"github.com/kbridge/kbridge/internal/wire"
)

// Ingest reads Kafka and appends to Redis streams. Create it with New and
// start it with Run. Stats is safe for concurrent use.
type Ingest struct {
	cfg    Config
	log    *slog.Logger
	client *kafka.Client
	owner  string
	ran    atomic.Bool

	counters     counters
	parts        registry
	topics       *topicWatch
	metaVersions metadataVersions
	// appendMulti: the Redis user may run MULTI, EXEC and RENAME
	// (probeAppendPath), so appends are MULTI/EXEC transactions
	// (stream_multi.go); else the append script.
	appendMulti atomic.Bool
	dlq         *dlqExporter // nil when the dead-letter export is off
	// fetcher fetches every assigned partition (kfetch: requests carrying
	// many partitions of one broker, within FetchMemory); set by Run.
	fetcher atomic.Pointer[kfetch.Fetcher]

	// commitFault, set by tests only (export_test.go), fails the commit
	// of the partitions it returns an error for.
	commitFault func(topic string, partition int) error
}

// New validates cfg and returns an Ingest. It does no I/O.
func New(cfg Config) (*Ingest, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	host, _ := os.Hostname()
	in := &Ingest{
		cfg:    cfg,
		log:    cfg.Logger,
		client: &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Timeout: 10 * time.Second, Transport: cfg.transport()},
		owner:  host + ":" + strconv.Itoa(os.Getpid()),
		topics: newTopicWatch(cfg.Topics),
	}
	in.dlq = newDLQExporter(in)
	return in, nil
}

// Stats returns a snapshot of the counters, the configured topics and the
// assigned partitions.
func (in *Ingest) Stats() Stats {
	st := Stats{Counters: in.counters.snapshot(), Partitions: in.parts.list(), Topics: in.topics.list()}
	if f := in.fetcher.Load(); f != nil {
		fs := f.Stats()
		st.Fetches, st.FetchRequests = fs.PartitionFetches, fs.Requests
		st.KafkaErrors += fs.RequestErrors + fs.PartitionErrors + fs.MetadataErrors
		st.FetchMemory, st.FetchMemoryPeak = fs.MemoryHeld+fs.MemoryReserved, fs.MemoryPeak
		st.AbortedSkipped, st.MarkersSkipped = fs.AbortedRecords, fs.ControlBatches
	}
	sort.Slice(st.Partitions, func(i, j int) bool {
		a, b := st.Partitions[i], st.Partitions[j]
		return a.Topic < b.Topic || a.Topic == b.Topic && a.Partition < b.Partition
	})
	for _, p := range st.Partitions {
		st.Backlog += p.Backlog
	}
	return st
}

// Run joins the consumer group and bridges until ctx is done, then shuts
// down in this order: stop fetching; observe each partition's frontier once
// more and commit it (bounded by FinalCommitTimeout, so a slow broker cannot
// hold the group); leave the group; stop the fetcher. It never waits for
// workers: what is in Redis stays there and is committed by whoever owns the
// partition next. Run returns nil on cancellation, or the error that
// stopped it.
func (in *Ingest) Run(ctx context.Context) error {
	if !in.ran.CompareAndSwap(false, true) {
		return ErrClosed
	}
	if err := in.start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting: never joined
		}
		return err
	}
	in.log.Info("ingest started", "group", in.cfg.Group, "topics", strings.Join(in.cfg.Topics, ","),
		"brokers", strings.Join(in.cfg.Brokers, ","), "worker_groups", strings.Join(in.cfg.WorkerGroups, ","),
		"partition_cap", in.cfg.PartitionCap, "low_watermark", in.cfg.LowWatermark,
		"isolation_level", in.cfg.Isolation.String(), "fetch_memory", in.cfg.FetchMemory)
	defer in.setMemoryLimit()()
	fetcher, err := kfetch.New(kfetch.Config{
		Client: in.client, ClientID: "kbridge", Isolation: in.cfg.Isolation,
		MemoryBytes: in.cfg.FetchMemory, PartitionMaxBytes: int32(in.cfg.FetchMaxBytes),
		MaxBytes: int32(min(8<<20, in.cfg.FetchMemory/4, math.MaxInt32)), MaxWait: in.cfg.FetchMaxWait, Logger: in.log,
		BatchMaxBytes: in.cfg.FetchBatchMaxBytes,
	})
	if err != nil {
		return fmt.Errorf("kafka fetcher: %w", err)
	}
	// The fetcher outlives the groups Run joins (one per set of topics):
	// partitions stop fetching (Close) when their generation ends, and it
	// stops once Run returns, after the last group was left.
	fctx, stopFetcher := context.WithCancel(context.Background())
	fetched := make(chan struct{})
	go func() { defer close(fetched); _ = fetcher.Run(fctx) }()
	defer func() { stopFetcher(); <-fetched }()
	in.fetcher.Store(fetcher)
	// Dead letters to Kafka (dlqexport.go); stopped after the final commit
	// (Run can also return on an error while ctx is live: a refused join).
	dctx, cancelDLQ := context.WithCancel(ctx)
	stopDLQ := in.dlq.start(dctx)
	defer func() { cancelDLQ(); stopDLQ() }()
	if in.dlq == nil {
		in.log.Warn("dead letters are NOT exported to Kafka (export disabled): a Redis that loses its data loses them for good")
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go in.watchTopics(wctx)
	for ctx.Err() == nil {
		changed := in.topics.wait()
		topics := in.topics.bridged()
		if len(topics) == 0 {
			// Nothing to read: stay out of the group (joining with no
			// topic would only cost the others rebalances).
			select {
			case <-ctx.Done():
			case <-changed:
			}
			continue
		}
		if err := in.runGroup(ctx, topics); err != nil {
			return err
		}
	}
	in.log.Info("ingest stopped", "group", in.cfg.Group)
	return nil
}

// runGroup is a member of the consumer group subscribed to topics until ctx
// is done (nil), the set of topics to bridge changes (nil: Run joins again
// with the new set), or the group refuses this member (*AuthError). It
// leaves the group before returning.
func (in *Ingest) runGroup(ctx context.Context, topics []string) error {
	gctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for gctx.Err() == nil {
			select {
			case <-gctx.Done():
				return
			case <-in.topics.wait():
				if !slices.Equal(in.topics.bridged(), topics) {
					in.log.Info("the topics to bridge changed: joining the group again", "group", in.cfg.Group,
						"topics", strings.Join(in.topics.bridged(), ","))
					cancel()
					return
				}
			}
		}
	}()
	view := in.newLeaderView(gctx, cancel, topics) // checks the topics before each join (topics.go)
	group, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                in.cfg.Group,
		Brokers:           in.cfg.Brokers,
		Dialer:            noAutoCreate(in.cfg.dialer()), // the leader never creates a topic (autocreate.go)
		Topics:            topics,
		GroupBalancers:    view.balancers(),
		HeartbeatInterval: in.cfg.HeartbeatInterval,
		SessionTimeout:    in.cfg.SessionTimeout,
		RebalanceTimeout:  in.cfg.RebalanceTimeout,
		JoinGroupBackoff:  time.Second,
		StartOffset:       in.cfg.startOffset(),
		// Not kafka-go's partition watcher (see topics.go): it ends every
		// generation while a topic is missing.
		WatchPartitionChanges: false,
		// Bounds every coordinator request, the final commit included:
		// a member that overstays RebalanceTimeout is evicted.
		Timeout:     in.cfg.FinalCommitTimeout,
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) { in.log.Warn("kafka group: " + fmt.Sprintf(msg, args...)) }),
	})
	if err != nil {
		return fmt.Errorf("kafka consumer group: %w", err)
	}
	in.log.Info("joining the consumer group", "group", in.cfg.Group, "topics", strings.Join(topics, ","))
	var fatal error
	var active atomic.Bool // a generation is running
	for {
		gen, err := group.Next(gctx)
		if gctx.Err() != nil {
			break
		}
		if err != nil {
			in.counters.kafkaErrs.Add(1)
			if err := in.kafkaError(err); errors.As(err, new(*AuthError)) {
				// The group refused this member (no READ on it): no
				// generation was joined, nothing committed.
				in.log.Error("joining the consumer group refused; stopping", "group", in.cfg.Group, "err", err)
				fatal = err
				break
			}
			// Join/sync errors: kafka-go already backs off; say so and go on.
			in.log.Warn("joining the consumer group failed; retrying", "group", in.cfg.Group, "err", err)
			continue
		}
		in.counters.rebalances.Add(1)
		active.Store(true)
		gen.Start(func(ctx context.Context) { <-ctx.Done(); active.Store(false) })
		in.startGeneration(gen, view.take())
	}
	if ctx.Err() != nil {
		in.log.Info("shutting down: final commit, then leaving the group", "group", in.cfg.Group)
	}
	in.leave(group, active.Load())
	return fatal
}

// leave closes the group: that ends the running generation (its partitions
// commit and return) and leaves the group, so that the partitions move on at
// once. Without a generation, kafka-go may be inside a JoinGroup request,
// which the coordinator holds until every member rejoined (up to the
// rebalance timeout of the slowest): leave waits for it a second only, so
// that a SIGTERM while joining exits at once (Docker stops a container 10s
// after SIGTERM); the request goes on in the background, and the member it
// joins leaves as soon as it gets the answer. With a generation, the final
// commit has its own bounds (FinalCommitTimeout).
func (in *Ingest) leave(group *kafka.ConsumerGroup, inGeneration bool) {
	closed := make(chan struct{})
	go func() {
		group.Close()
		if t, ok := in.client.Transport.(*kafka.Transport); ok {
			t.CloseIdleConnections()
		}
		close(closed)
	}()
	bound := time.Second
	if inGeneration {
		bound = 3*in.cfg.FinalCommitTimeout + time.Second
	}
	select {
	case <-closed:
	case <-time.After(bound):
		in.log.Warn("leaving the group takes long (a join or a commit in flight); not waiting for it", "group", in.cfg.Group, "waited", bound)
	}
}

// start runs the start-up checks (startup.go) and publishes the wire
// contract version workers check (docs/wire.md); a newer one in Redis is a
// newer kbridge's, which this one must not lower.
func (in *Ingest) start(ctx context.Context) error {
	if err := in.checkRedis(ctx); err != nil {
		return err
	}
	err := in.retryStartup(ctx, "redis", func() error {
		err := wire.PublishVersion(ctx, in.cfg.Redis, in.cfg.Prefix)
		switch {
		case errors.Is(err, wire.ErrVersion):
			return permanent{err}
		case err != nil && (tlsFailure(err) || redisAuthFailure(err)):
			return redisAuthError(err)
		}
		return err
	})
	if err != nil {
		return err
	}
	return in.checkKafka(ctx)
}

// startGeneration starts one function per assigned partition plus the
// generation's committer. Every function stays alive until the generation
// ends: in kafka-go, one that returns early ends the whole generation.
//
// When this member led the join (assigned: the partition counts it
// assigned), one more function ends the generation when a topic's
// partition count changes (watchPartitions).
func (in *Ingest) startGeneration(gen *kafka.Generation, assigned map[string]int) {
	c := in.newCommitter(gen)
	var streams []string
	for _, topic := range sortedKeys(gen.Assignments) {
		for _, a := range gen.Assignments[topic] {
			p := in.newPartition(topic, a.ID, a.Offset, c)
			streams = append(streams, p.stream.key)
			c.wg.Add(1)
			gen.Start(func(ctx context.Context) {
				defer c.wg.Done()
				p.run(ctx)
			})
		}
	}
	in.log.Info("joined generation", "group", in.cfg.Group, "generation", gen.ID, "member", gen.MemberID,
		"leader", assigned != nil, "partitions", len(streams), "streams", strings.Join(streams, " "))
	gen.Start(c.run)
	if assigned != nil {
		gen.Start(func(ctx context.Context) { in.watchPartitions(ctx, assigned) })
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

type tp struct {
	topic     string
	partition int
}

// retry runs op until it succeeds or ctx is done, backing off from 100ms to
// 5s and logging each failure. An error wrapped in permanent is returned at
// once, unwrapped.
func retry(ctx context.Context, log *slog.Logger, what string, op func() error) error {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := op()
		if err == nil {
			return nil
		}
		var pe permanent
		if errors.As(err, &pe) {
			return pe.err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Warn(what+" unavailable; retrying", "attempt", attempt, "backoff", backoff, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func isConnError(err error) bool {
	var re redis.Error
	return err != nil && !errors.As(err, &re)
}

// Prefix returns the configured key prefix.
func (in *Ingest) Prefix() string { return in.cfg.Prefix }

// StreamKey returns the stream key of a partition under this ingest's prefix.
func (in *Ingest) StreamKey(topic string, partition int) string {
	return wire.StreamKey(in.cfg.Prefix, topic, partition)
}

// memoryHeadroom is what the ingest takes besides fetched data, under the
// soft memory limit: goroutines, clients, the status of every partition,
// the arguments of the appends in flight (measured: 1,000 partitions hold
// about 20 MiB of live heap outside the fetch budget).
const memoryHeadroom = 64 << 20

// memLimit is the soft memory limit the ingests of this process set, and
// what each of them counts in it.
var memLimit struct {
	sync.Mutex
	sum int64 // the running ingests' shares
	set int64 // the limit they set (0: none of theirs in force)
}

// setMemoryLimit gives the Go runtime a soft memory limit that covers the
// fetched data of every ingest running in the process — each one's
// FetchMemory, plus what one record batch may exceed it by
// (FetchBatchMaxBytes beyond FetchMemory) — and memoryHeadroom once, unless
// the program has a limit of its own (GOMEMLIMIT, or debug.SetMemoryLimit of
// a program that embeds the ingest). It keeps GOGC=100, but makes the GC
// collect before the heap passes the limit. Without it the heap grows to
// twice what is live before a collection, and the fetch budget, fully used,
// doubles in RSS (issue 10: RSS with a backlog on 1,000 partitions). The
// limit is soft: if live data ever exceeds it, the runtime caps the GC at
// about half the CPU rather than fail. The returned func takes this
// ingest's share out again (Run returns).
func (in *Ingest) setMemoryLimit() (release func()) {
	share := in.cfg.FetchMemory + max(0, in.cfg.FetchBatchMaxBytes-in.cfg.FetchMemory)
	memLimit.Lock()
	defer memLimit.Unlock()
	if cur := debug.SetMemoryLimit(-1); memLimit.set == 0 || cur != memLimit.set {
		// None of ours in force: a limit there is the program's own.
		if os.Getenv("GOMEMLIMIT") != "" || cur != math.MaxInt64 {
			return func() {}
		}
		memLimit.sum = 0
	}
	memLimit.sum += share
	memLimit.set = memLimit.sum + memoryHeadroom
	debug.SetMemoryLimit(memLimit.set)
	in.log.Info("soft memory limit set (fetch memory of the ingests in this process + headroom; GOMEMLIMIT overrides it)", "memory_limit", memLimit.set)
	return func() {
		memLimit.Lock()
		defer memLimit.Unlock()
		if debug.SetMemoryLimit(-1) != memLimit.set {
			return // the program set its own since
		}
		memLimit.sum -= share
		if memLimit.sum <= 0 {
			memLimit.sum, memLimit.set = 0, 0
			debug.SetMemoryLimit(math.MaxInt64)
			return
		}
		memLimit.set = memLimit.sum + memoryHeadroom
		debug.SetMemoryLimit(memLimit.set)
	}
}
