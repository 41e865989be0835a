package bridge

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"

	"github.com/kbridge/kbridge/internal/kfetch"
	"github.com/kbridge/kbridge/internal/wire"
)

// Config configures an Ingest. The zero value of every field but Brokers,
// Topics and Redis means its default.
type Config struct {
	// Brokers are the Kafka bootstrap addresses (host:port). Required.
	Brokers []string
	// Topics to read. Required.
	Topics []string
	// Group is the Kafka consumer group ID. Default "kbridge".
	Group string
	// TLS, when non-nil, is used for every connection to Kafka.
	TLS *tls.Config
	// SASL, when non-nil, authenticates to Kafka (plain or SCRAM).
	SASL sasl.Mechanism

	// Redis is the client of the Redis (or Redis Cluster) that holds the
	// streams. Required. The Ingest does not close it. Set the client's
	// ContextTimeoutEnabled option: without it go-redis ignores context
	// deadlines, and a hung Redis could hold a rebalance past its timeout.
	Redis redis.UniversalClient
	// Prefix of every Redis key. Default "kbridge".
	Prefix string
	// WorkerGroups are the Redis consumer groups the ingest creates on each
	// stream (at ID 0, with MKSTREAM, before its first append) and recreates
	// when Redis lost them. The commit and the trim wait for every group
	// that exists on a stream — these and any other, e.g. one another ingest
	// created during a rolling restart (fan-out) — so leaving a group out of
	// this list never removes it: that is an explicit act (XGROUP DESTROY,
	// "kbridge groups remove"). Default ["workers"].
	WorkerGroups []string

	// PartitionCap is the backlog (records appended but not yet acknowledged
	// by every group) at which a partition stops being fetched. Default 10000.
	PartitionCap int64
	// LowWatermark is the backlog at or below which a paused partition is
	// fetched again. Default PartitionCap/2; ResumeWhenEmpty sets it to 0
	// (0 itself means the default).
	LowWatermark int64
	// GlobalCap caps the backlog summed over every partition of this ingest;
	// 0 (the default) means no cap beyond the per-partition ones.
	GlobalCap int64
	// GlobalLowWatermark is the summed backlog at or below which fetching
	// resumes after GlobalCap was reached. Default GlobalCap/2;
	// ResumeWhenEmpty sets it to 0.
	GlobalLowWatermark int64

	// CommitInterval is how often the partitions' frontiers are computed
	// (each from one snapshot of its stream), committed to Kafka together
	// and the streams trimmed. A partition where nothing can have changed
	// — every entry acknowledged and committed, nothing appended since its
	// last snapshot — is not read again before IdleCheckInterval(). Default
	// 1s.
	CommitInterval time.Duration
	// MetadataInterval is how often the configured topics' metadata is read:
	// a topic created, deleted or made readable, or a change in its
	// partitions, is acted on within about this time. Default 5s.
	MetadataInterval time.Duration
	// PausedPollInterval is how often a paused partition's backlog is read
	// again. Default 200ms.
	PausedPollInterval time.Duration
	// StartOffset is where a group with no committed offset starts on a
	// partition whose stream is empty: "earliest" (default) or "latest".
	StartOffset string
	// Isolation says which records reach the streams: read_committed (the
	// default, the zero value) only those of committed transactions and
	// non-transactional ones, and reads no further than the last stable
	// offset; read_uncommitted every record up to the high watermark,
	// aborted and open transactions included.
	Isolation kfetch.IsolationLevel
	// FetchMemory is the budget, in bytes, of everything fetched and not
	// yet appended, for the whole process: fetches in flight, results
	// fetched ahead and the one being appended, with their decoding
	// buffers. Whatever the number of partitions and the Kafka backlog,
	// fetching waits for memory rather than exceed it (beyond it: at most
	// one record batch larger than FetchMaxBytes per request in flight, and
	// per partition being appended one batch that decompresses to more
	// than is left, up to FetchBatchMaxBytes).
	// Default 64 MiB.
	FetchMemory int64
	// FetchMaxBytes bounds what one partition brings in one fetch request
	// (Kafka's max.partition.fetch.bytes; requests carry many partitions
	// of one broker). Default 1 MiB.
	FetchMaxBytes int
	// FetchBatchMaxBytes is the most one record batch may take once
	// decompressed (a guard against zip bombs; Kafka bounds a batch's
	// compressed size only). A batch within it is bridged even when larger
	// than FetchMemory, which it then exceeds while the batch is appended;
	// one beyond it stalls its partition (StallBatchTooLarge). Default
	// max(FetchMemory, 64 MiB); below 2 GiB.
	FetchBatchMaxBytes int64
	// FetchMaxWait is how long the broker holds a fetch of partitions at
	// their log end waiting for new records (one such request per broker
	// at a time). Default 500ms.
	FetchMaxWait time.Duration
	// AppendBatch is the most records one append script call carries (the
	// calls of one fetch are pipelined), or one MULTI/EXEC transaction
	// (stream_multi.go; one round trip each). Default 500.
	AppendBatch int

	// SessionTimeout, RebalanceTimeout and HeartbeatInterval of the Kafka
	// group membership. Defaults 30s, 30s and 3s.
	SessionTimeout    time.Duration
	RebalanceTimeout  time.Duration
	HeartbeatInterval time.Duration
	// FinalCommitTimeout bounds the final commit on revoke and shutdown; it
	// must stay well inside RebalanceTimeout. Default 5s.
	FinalCommitTimeout time.Duration

	// StatusTTL is the time to live of the per-partition status hashes,
	// refreshed every CommitInterval: how long a status outlives its ingest.
	// Default 30s, or 3 × CommitInterval when that is longer.
	StatusTTL time.Duration
	// StartupTimeout bounds how long Run retries a Kafka or Redis it cannot
	// reach at start, before it joins the group; then it returns a
	// *StartupError, so that an orchestrator sees the failure. (A refusal —
	// wrong credentials, a certificate that does not verify, a missing
	// permission — ends Run at once with an *AuthError.) Once running, an
	// outage is retried for as long as it lasts. Default 2m.
	StartupTimeout time.Duration
	// AllowEviction lets Run start against a Redis whose maxmemory-policy
	// may evict keys, with a loud warning, instead of refusing.
	AllowEviction bool

	// Logger receives the ingest's logs; nil discards them.
	Logger *slog.Logger

	// Dead letters (bridge/dlqexport.go): the ingest copies every dead
	// letter of its partitions to Kafka and commits no offset past one that
	// Kafka does not have yet.

	// DLQTopic is the template of the Kafka topic that receives a topic's
	// dead letters; "{topic}" stands for the topic's name. A missing topic
	// is created with the source topic's partition count. Default
	// "{topic}.dlq".
	DLQTopic string
	// DisableDLQExport turns the export off: dead letters then live in
	// Redis only, and a Redis that loses its data (a restart without
	// persistence, a failover) loses them for good. Default false.
	DisableDLQExport bool
	// DLQMaxBytes is the largest dead letter exported (a Kafka message,
	// headers included); a larger one is skipped with an error log and
	// stays in Redis only. Default 1 MiB, the broker's default limit.
	DLQMaxBytes int
	// DLQScanInterval is how often the dead-letter streams of partitions
	// with nothing to commit are looked at (others are looked at on every
	// commit). Default 5s.
	DLQScanInterval time.Duration
}

// ResumeWhenEmpty, as LowWatermark or GlobalLowWatermark, is a low
// watermark of 0: fetching resumes only once every record in the streams
// was acknowledged. (A zero LowWatermark means the default.)
const ResumeWhenEmpty int64 = -1

// withDefaults returns a copy of c with the defaults filled in. Apply it once
// to a Config as given (it turns ResumeWhenEmpty into 0, which a second
// application would read as "the default").
// DefaultAppendBatch is --append-batch's default: the most records one
// append (one MULTI/EXEC transaction, or one append script call) carries.
const DefaultAppendBatch = 500

func (c Config) withDefaults() Config {
	if c.Group == "" {
		c.Group = "kbridge"
	}
	if c.Prefix == "" {
		c.Prefix = wire.DefaultPrefix
	}
	if len(c.WorkerGroups) == 0 {
		c.WorkerGroups = []string{"workers"}
	}
	if c.PartitionCap == 0 {
		c.PartitionCap = 10000
	}
	switch c.LowWatermark {
	case 0:
		c.LowWatermark = c.PartitionCap / 2
	case ResumeWhenEmpty:
		c.LowWatermark = 0
	}
	switch {
	case c.GlobalLowWatermark == ResumeWhenEmpty:
		c.GlobalLowWatermark = 0
	case c.GlobalCap > 0 && c.GlobalLowWatermark == 0:
		c.GlobalLowWatermark = c.GlobalCap / 2
	}
	if c.CommitInterval == 0 {
		c.CommitInterval = time.Second
	}
	if c.MetadataInterval == 0 {
		c.MetadataInterval = 5 * time.Second
	}
	if c.PausedPollInterval == 0 {
		c.PausedPollInterval = 200 * time.Millisecond
	}
	if c.StartOffset == "" {
		c.StartOffset = "earliest"
	}
	if c.FetchMemory == 0 {
		c.FetchMemory = 64 << 20
	}
	if c.FetchMaxBytes == 0 {
		c.FetchMaxBytes = 1 << 20
	}
	if c.FetchMaxWait == 0 {
		c.FetchMaxWait = 500 * time.Millisecond
	}
	if c.AppendBatch == 0 {
		c.AppendBatch = DefaultAppendBatch
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = 10 * time.Second
	}
	if c.RebalanceTimeout == 0 {
		c.RebalanceTimeout = 12 * time.Second
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = time.Second
	}
	if c.FinalCommitTimeout == 0 {
		c.FinalCommitTimeout = 5 * time.Second
	}
	if c.StatusTTL == 0 {
		c.StatusTTL = max(30*time.Second, 3*c.CommitInterval)
	}
	if c.StartupTimeout == 0 {
		c.StartupTimeout = 2 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c.dlqDefaults()
}

// Validate reports every problem of c (after defaults) at once, naming the
// kbridge ingest flag of each setting. A default derived from another
// setting (the low watermark from the cap, the status TTL from the commit
// interval) is not reported: the setting it derives from is.
func (c Config) Validate() error {
	raw := c
	c = c.withDefaults()
	var p []string
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }
	if len(c.Brokers) == 0 {
		add("no Kafka brokers (--brokers)")
	}
	for _, b := range c.Brokers {
		if b == "" {
			add("an empty Kafka broker address in --brokers")
		}
	}
	if len(c.Topics) == 0 {
		add("no topics (--topics)")
	}
	for _, t := range c.Topics {
		if !validTopic(t) {
			add("topic %q is not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 249)", t)
		}
	}
	if c.Redis == nil {
		add("no Redis client")
	}
	for _, g := range c.WorkerGroups {
		if g == "" {
			add("an empty worker group name in --worker-groups")
		}
	}
	if c.PartitionCap < 1 {
		add("--partition-cap %d must be at least 1", c.PartitionCap)
	}
	switch {
	case raw.LowWatermark < ResumeWhenEmpty:
		add("--low-watermark %d must be at least 0", raw.LowWatermark)
	case raw.LowWatermark != 0 && c.PartitionCap >= 1 && c.LowWatermark >= c.PartitionCap:
		add("--low-watermark %d must be below --partition-cap %d", c.LowWatermark, c.PartitionCap)
	}
	if c.GlobalCap < 0 {
		add("--global-cap %d must not be negative", c.GlobalCap)
	}
	switch {
	case raw.GlobalLowWatermark < ResumeWhenEmpty:
		add("--global-low-watermark %d must be at least 0", raw.GlobalLowWatermark)
	case raw.GlobalLowWatermark != 0 && c.GlobalCap == 0:
		add("--global-low-watermark %d needs --global-cap", c.GlobalLowWatermark)
	case raw.GlobalLowWatermark != 0 && c.GlobalCap > 0 && c.GlobalLowWatermark >= c.GlobalCap:
		add("--global-low-watermark %d must be below --global-cap %d", c.GlobalLowWatermark, c.GlobalCap)
	}
	if c.CommitInterval < 10*time.Millisecond {
		add("--commit-interval %v must be at least 10ms", c.CommitInterval)
	}
	if c.MetadataInterval < 10*time.Millisecond {
		add("--metadata-interval %v must be at least 10ms", c.MetadataInterval)
	}
	if c.PausedPollInterval < time.Millisecond {
		add("paused poll interval %v must be at least 1ms", c.PausedPollInterval)
	}
	if c.StartOffset != "earliest" && c.StartOffset != "latest" {
		add("--start-offset %q must be earliest or latest", c.StartOffset)
	}
	if c.FetchMaxBytes < 1024 {
		add("--fetch-max-bytes %d must be at least 1024", c.FetchMaxBytes)
	}
	if c.Isolation != kfetch.ReadCommitted && c.Isolation != kfetch.ReadUncommitted {
		add("--isolation-level %v must be read_committed or read_uncommitted", c.Isolation)
	}
	if c.FetchMemory < 1<<20 {
		add("--fetch-memory %d must be at least 1 MiB (1048576)", c.FetchMemory)
	} else if int64(c.FetchMaxBytes) > c.FetchMemory {
		add("--fetch-max-bytes %d must not exceed --fetch-memory %d: no partition could ever be fetched", c.FetchMaxBytes, c.FetchMemory)
	}
	if c.FetchBatchMaxBytes != 0 && (c.FetchBatchMaxBytes < 1<<20 || c.FetchBatchMaxBytes > math.MaxInt32) {
		add("--fetch-batch-max-bytes %d must be between 1 MiB (1048576) and 2147483647", c.FetchBatchMaxBytes)
	}
	if c.FetchMaxWait < time.Millisecond {
		add("--fetch-max-wait %v must be at least 1ms", c.FetchMaxWait)
	}
	if c.AppendBatch < 1 {
		add("--append-batch %d must be at least 1", c.AppendBatch)
	}
	if c.HeartbeatInterval >= c.SessionTimeout {
		add("--heartbeat-interval %v must be below --session-timeout %v", c.HeartbeatInterval, c.SessionTimeout)
	}
	// On a rebalance: the heartbeat sees it, the partitions report (bounded
	// by FinalCommitTimeout) and the commit goes out (bounded by the same, as
	// the group's request timeout); all of it must fit in RebalanceTimeout or
	// the broker evicts the member and refuses its commit.
	if c.FinalCommitTimeout < 10*time.Millisecond {
		add("--final-commit-timeout %v must be at least 10ms", c.FinalCommitTimeout)
	}
	if need := c.HeartbeatInterval + 2*c.FinalCommitTimeout; need > c.RebalanceTimeout {
		add("--rebalance-timeout %v must be at least --heartbeat-interval %v + 2 × --final-commit-timeout %v = %v",
			c.RebalanceTimeout, c.HeartbeatInterval, c.FinalCommitTimeout, need)
	}
	if raw.StatusTTL != 0 && c.StatusTTL < c.CommitInterval {
		add("--status-ttl %v must be at least --commit-interval %v (the status is refreshed that often)", c.StatusTTL, c.CommitInterval)
	}
	if c.StartupTimeout < 0 {
		add("--startup-timeout %v must be above 0", c.StartupTimeout)
	}
	p = append(p, c.dlqProblems()...)
	if len(p) > 0 {
		return &ConfigError{Problems: p}
	}
	return nil
}

func validTopic(t string) bool {
	if t == "" || len(t) > 249 || t == "." || t == ".." {
		return false
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func (c Config) startOffset() int64 {
	if c.StartOffset == "latest" {
		return kafka.LastOffset
	}
	return kafka.FirstOffset
}

func (c Config) dialer() *kafka.Dialer {
	return &kafka.Dialer{Timeout: 10 * time.Second, DualStack: true, TLS: c.TLS, SASLMechanism: c.SASL}
}

func (c Config) transport() *kafka.Transport {
	return &kafka.Transport{DialTimeout: 10 * time.Second, TLS: c.TLS, SASL: c.SASL, ClientID: "kbridge"}
}

// IdleCheckInterval is the longest an assigned partition goes without a
// snapshot of its stream while nothing can have changed in it: ten commit
// intervals, at most half the status TTL (so the status hash, refreshed by
// each snapshot, never expires while the ingest runs). A loss of Redis on
// such a partition is seen within that plus one commit interval; one that is
// appended to sees it at its next append.
func (c Config) IdleCheckInterval() time.Duration {
	c = c.withDefaults()
	return max(min(10*c.CommitInterval, c.StatusTTL/2), c.CommitInterval)
}

// DefaultConfig returns a Config with every default filled in (and no
// brokers, topics or Redis client).
func DefaultConfig() Config { return Config{}.withDefaults() }

// WithRedisPlaceholder returns a copy of c whose Redis client is a
// placeholder if none is set, so that Validate can check a configuration
// before the client exists (a CLI validating its flags). The placeholder
// does no I/O until used; never Run with it.
func (c Config) WithRedisPlaceholder() Config {
	if c.Redis == nil {
		c.Redis = redis.NewClient(&redis.Options{Addr: "placeholder:0"})
	}
	return c
}
