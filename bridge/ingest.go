package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

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

	counters counters
	parts    registry
	dlq      *dlqExporter // nil when the dead-letter export is off
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
	}
	in.dlq = newDLQExporter(in)
	return in, nil
}

// Stats returns a snapshot of the counters and the assigned partitions.
func (in *Ingest) Stats() Stats {
	st := Stats{Counters: in.counters.snapshot(), Partitions: in.parts.list()}
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
// hold the group); leave the group. It never waits for workers: what is in
// Redis stays there and is committed by whoever owns the partition next.
// Run returns nil on cancellation, or the error that stopped it.
func (in *Ingest) Run(ctx context.Context) error {
	if !in.ran.CompareAndSwap(false, true) {
		return ErrClosed
	}
	if err := in.checkRedis(ctx); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return nil // stopped while waiting for Redis: never joined
	}
	// The wire contract version workers check (docs/wire.md); a newer one
	// in Redis is a newer kbridge's, which this one must not lower.
	var verr error
	if err := retry(ctx, in.log, "redis", func() error {
		verr = wire.PublishVersion(ctx, in.cfg.Redis, in.cfg.Prefix)
		if errors.Is(verr, wire.ErrVersion) {
			return nil
		}
		return verr
	}); err != nil {
		return nil // ctx done
	}
	if verr != nil {
		return verr
	}
	// Dead letters to Kafka (dlqexport.go); stopped after the final commit.
	stopDLQ := in.dlq.start(ctx)
	defer stopDLQ()
	if in.dlq == nil {
		in.log.Warn("dead letters are NOT exported to Kafka (export disabled): a Redis that loses its data loses them for good")
	}
	group, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                in.cfg.Group,
		Brokers:           in.cfg.Brokers,
		Dialer:            in.cfg.dialer(),
		Topics:            in.cfg.Topics,
		GroupBalancers:    []kafka.GroupBalancer{kafka.RangeGroupBalancer{}, kafka.RoundRobinGroupBalancer{}},
		HeartbeatInterval: in.cfg.HeartbeatInterval,
		SessionTimeout:    in.cfg.SessionTimeout,
		RebalanceTimeout:  in.cfg.RebalanceTimeout,
		JoinGroupBackoff:  time.Second,
		StartOffset:       in.cfg.startOffset(),
		// New partitions of a topic trigger a rebalance, so they get read.
		WatchPartitionChanges: true,
		// Bounds every coordinator request, the final commit included:
		// a member that overstays RebalanceTimeout is evicted.
		Timeout:     in.cfg.FinalCommitTimeout,
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) { in.log.Warn("kafka group: " + fmt.Sprintf(msg, args...)) }),
	})
	if err != nil {
		return fmt.Errorf("kafka consumer group: %w", err)
	}
	in.log.Info("ingest started", "group", in.cfg.Group, "topics", strings.Join(in.cfg.Topics, ","),
		"brokers", strings.Join(in.cfg.Brokers, ","), "worker_groups", strings.Join(in.cfg.WorkerGroups, ","),
		"partition_cap", in.cfg.PartitionCap, "low_watermark", in.cfg.LowWatermark)
	for {
		gen, err := group.Next(ctx)
		if ctx.Err() != nil {
			break
		}
		if err != nil {
			// Join/sync errors: kafka-go already backs off; say so and go on.
			in.counters.kafkaErrs.Add(1)
			in.log.Warn("joining the consumer group failed; retrying", "group", in.cfg.Group, "err", err)
			continue
		}
		in.counters.rebalances.Add(1)
		in.startGeneration(gen)
	}
	in.log.Info("shutting down: final commit, then leaving the group", "group", in.cfg.Group)
	// Close ends the running generation (its functions commit and return)
	// and then leaves the group, so the partitions move on at once.
	group.Close()
	if t, ok := in.client.Transport.(*kafka.Transport); ok {
		t.CloseIdleConnections()
	}
	in.log.Info("ingest stopped", "group", in.cfg.Group)
	return nil
}

// checkRedis refuses (or warns about) a Redis that may evict keys
// (invariant 5) and retries while Redis is unreachable.
func (in *Ingest) checkRedis(ctx context.Context) error {
	var policy string
	err := retry(ctx, in.log, "redis", func() error {
		p, err := maxmemoryPolicy(ctx, in.cfg.Redis)
		if err != nil {
			if isConnError(err) {
				in.counters.redisErrs.Add(1)
				return err
			}
			policy = "" // CONFIG may be disabled (managed Redis, ACLs): cannot tell
			return nil
		}
		policy = p
		return nil
	})
	if err != nil {
		return nil // ctx done
	}
	switch policy {
	case "noeviction":
		return nil
	case "":
		in.log.Warn("cannot read maxmemory-policy (CONFIG GET refused); make sure it is noeviction, or evicted streams lose records")
		return nil
	}
	if in.cfg.AllowEviction {
		in.log.Error("REDIS MAY EVICT STREAMS: maxmemory-policy is not noeviction; evicted records that no worker processed are fetched again only if the loss is noticed", "maxmemory_policy", policy)
		return nil
	}
	return fmt.Errorf("%w: it is %q; set it with CONFIG SET maxmemory-policy noeviction, or pass --allow-eviction", ErrEvictionPolicy, policy)
}

// maxmemoryPolicy reads maxmemory-policy; on a Redis Cluster that of every
// master (CONFIG GET alone asks one node), returning one that is not
// noeviction if there is one.
func maxmemoryPolicy(ctx context.Context, rdb redis.UniversalClient) (string, error) {
	c, ok := rdb.(*redis.ClusterClient)
	if !ok {
		res, err := rdb.ConfigGet(ctx, "maxmemory-policy").Result()
		return res["maxmemory-policy"], err
	}
	var mu sync.Mutex
	policy := "noeviction"
	err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		res, err := m.ConfigGet(ctx, "maxmemory-policy").Result()
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if p := res["maxmemory-policy"]; p != "noeviction" {
			policy = p
		}
		return nil
	})
	return policy, err
}

// startGeneration starts one function per assigned partition plus the
// generation's committer. Every function stays alive until the generation
// ends: in kafka-go, one that returns early ends the whole generation.
func (in *Ingest) startGeneration(gen *kafka.Generation) {
	c := &committer{in: in, commit: gen.CommitOffsets, want: map[tp]int64{}, done: map[tp]int64{}}
	var assigned []string
	for _, topic := range sortedKeys(gen.Assignments) {
		for _, a := range gen.Assignments[topic] {
			p := in.newPartition(topic, a.ID, a.Offset, c)
			assigned = append(assigned, p.stream.key)
			c.wg.Add(1)
			gen.Start(func(ctx context.Context) {
				defer c.wg.Done()
				p.run(ctx)
			})
		}
	}
	in.log.Info("joined generation", "group", in.cfg.Group, "generation", gen.ID, "member", gen.MemberID,
		"partitions", len(assigned), "streams", strings.Join(assigned, " "))
	gen.Start(c.run)
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

// committer commits the frontiers of one generation's partitions together,
// every CommitInterval, and once more when the generation ends.
type committer struct {
	in     *Ingest
	commit func(map[string]map[int]int64) error // the generation's CommitOffsets
	wg     sync.WaitGroup                       // the generation's partition functions

	mu   sync.Mutex
	want map[tp]int64 // offered, not yet committed
	done map[tp]int64 // committed in this generation
}

// offer asks for off to be committed for t. Offers only move up: a lower one
// (a group recreated at 0, a failover to a replica behind) never replaces a
// higher one, not even while that one's commit is in flight.
func (c *committer) offer(t tp, off int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d, ok := c.done[t]; ok && off <= d {
		return
	}
	if w, ok := c.want[t]; !ok || off > w {
		c.want[t] = off
	}
}

// committed returns the last offset committed for t in this generation.
func (c *committer) committed(t tp) (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	off, ok := c.done[t]
	return off, ok
}

func (c *committer) run(ctx context.Context) {
	t := time.NewTicker(c.in.cfg.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			c.flush()
		case <-ctx.Done():
			// Wait for the partitions' final observations, bounded: a
			// member that overstays RebalanceTimeout is evicted and its
			// commit refused.
			waited := make(chan struct{})
			go func() { c.wg.Wait(); close(waited) }()
			select {
			case <-waited:
			case <-time.After(c.in.cfg.FinalCommitTimeout):
				c.in.log.Warn("final commit: some partitions did not report in time; committing what is known")
			}
			c.flush()
			return
		}
	}
}

func (c *committer) flush() {
	c.mu.Lock()
	if len(c.want) == 0 {
		c.mu.Unlock()
		return
	}
	batch := map[tp]int64{}
	offsets := map[string]map[int]int64{}
	for t, off := range c.want {
		batch[t] = off
		if offsets[t.topic] == nil {
			offsets[t.topic] = map[int]int64{}
		}
		offsets[t.topic][t.partition] = off
	}
	c.mu.Unlock()

	if err := c.commit(offsets); err != nil {
		c.in.counters.commitErrs.Add(1)
		c.in.log.Warn("kafka commit failed; will retry", "group", c.in.cfg.Group, "err", &CommitError{Offsets: offsets, Err: err})
		return
	}
	c.in.counters.commits.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	for t, off := range batch {
		c.done[t] = max(c.done[t], off)
		if w, ok := c.want[t]; ok && w <= off {
			delete(c.want, t)
		}
	}
}

// retry runs op until it succeeds or ctx is done, backing off from 100ms to
// 5s and logging each failure.
func retry(ctx context.Context, log *slog.Logger, what string, op func() error) error {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := op()
		if err == nil {
			return nil
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
