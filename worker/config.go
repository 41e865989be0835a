package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/wire"
)

// Handler processes one message. Returning nil acknowledges it. An error (or
// a panic) is a failed delivery: the entry is retried with backoff and
// dead-lettered after Config.MaxDeliveries runs. Wrap the error with
// RetryAfter to back off without counting a delivery, or with Permanent to
// dead-letter at once. ctx is cancelled when the worker stops waiting for
// the handler (the end of the shutdown timeout).
//
// A handler runs at least once per record; make its side effect idempotent
// (key it on topic, partition and offset): a worker that dies after the side
// effect and before the acknowledgement has its entry processed again.
type Handler func(ctx context.Context, m *Message) error

// Defaults of Config.
const (
	DefaultGroup               = "workers"
	DefaultConcurrency         = 16
	DefaultVisibilityTimeout   = 10 * time.Second
	DefaultMaxDeliveries       = 5
	DefaultBackoffMin          = time.Second
	DefaultBackoffMax          = time.Minute
	DefaultAckInterval         = 50 * time.Millisecond
	DefaultAckBatch            = 100
	DefaultBlockTimeout        = time.Second
	DefaultDiscoveryInterval   = 2 * time.Second
	DefaultShutdownTimeout     = 30 * time.Second
	DefaultConsumerIdle        = time.Hour
	DefaultRunsCleanupInterval = time.Minute
	DefaultMaxTransientTime    = 5 * time.Minute
)

// Config configures a Worker. The zero value of every field but Redis and
// Handler means its default.
type Config struct {
	// Redis is the client (required). It is not closed by the Worker.
	Redis redis.UniversalClient
	// Handler processes each message (required).
	Handler Handler
	// Prefix of the keys, as given to the ingest. Default "kbridge".
	Prefix string
	// Group is the worker (consumer) group; it must be one of the ingest's
	// worker groups. Default "workers".
	Group string
	// Consumer is this process's consumer name, unique among the workers of
	// the group. Default "<hostname>-<pid>-<random>".
	Consumer string
	// Topics restricts the worker to the streams of these topics. Default:
	// every stream of the registry.
	Topics []string
	// Concurrency is the number of handlers run at the same time. Default 16.
	// The streams with entries share them by handler time: each gets
	// ceil(Concurrency / streams with entries) slots while another waits.
	Concurrency int
	// ReadAhead is how many entries are read ahead of the handlers (leased,
	// waiting for a slot), so that a handler that finishes finds its next
	// entry without waiting for Redis. Default Concurrency. Reclaimed
	// entries may take up to Concurrency more.
	ReadAhead int
	// VisibilityTimeout is how long an entry may stay pending without its
	// lease being extended before other workers reclaim it. The lease of a
	// running handler is extended every VisibilityTimeout/3. Default 10s
	// (DefaultVisibilityTimeout).
	VisibilityTimeout time.Duration
	// ReclaimInterval is how often the worker looks for entries of dead
	// workers (XAUTOCLAIM). Default VisibilityTimeout/4, at most 5s.
	ReclaimInterval time.Duration
	// MaxDeliveries is the number of runs (handler starts) after which a
	// failing entry is dead-lettered. Default 5. 1 dead-letters on the first
	// failure. Runs are recorded in Redis before each start but the first
	// (start.lua; a first delivery starts without it), so the budget
	// survives crashes short of one run: a record whose handler crashes its
	// worker runs at most MaxDeliveries + 1 times. A delivery whose handler
	// never started (an entry read ahead by a worker that died) does not
	// count. Each group has its own record. In a group shared with workers
	// that decide on delivery counts (docs/wire.md rule 8: the Python and
	// shell workers), their runs are not recorded: a record runs at most
	// 2 × MaxDeliveries times there (each kind at most MaxDeliveries).
	MaxDeliveries int
	// BackoffMin is the wait before the first retry; it doubles with each
	// delivery up to BackoffMax. Defaults 1s and 1m.
	BackoffMin time.Duration
	// BackoffMax caps the retry backoff. Default 1m.
	BackoffMax time.Duration
	// MaxTransientTime bounds how long an entry may keep backing off
	// without counting deliveries: from its first transient failure in this
	// worker (a handler error wrapped with RetryAfter; for HTTPHandler 429,
	// 502, 503, 504 or no connection), each further transient failure within
	// MaxTransientTime costs no delivery; after it, each one counts as a
	// failed delivery, so that a downstream that never comes back still has
	// its entries dead-lettered after MaxDeliveries (about MaxTransientTime
	// plus the backoffs of MaxDeliveries deliveries). A redeploy shorter
	// than MaxTransientTime dead-letters nothing. Default 5m.
	MaxTransientTime time.Duration
	// AckInterval is the longest an acknowledgement waits to be sent with
	// others (XACK in batches). Default 50ms.
	AckInterval time.Duration
	// AckBatch sends the acknowledgements at once when this many wait.
	// Default 100.
	AckBatch int
	// BlockTimeout is the longest one XREADGROUP blocks; it bounds how long
	// a stop request waits for the read. Default 1s.
	BlockTimeout time.Duration
	// DiscoveryInterval is how often the registry is read for new streams.
	// Default 2s.
	DiscoveryInterval time.Duration
	// ShutdownTimeout is how long Run waits for running handlers once its
	// context is cancelled. Default 30s.
	ShutdownTimeout time.Duration
	// ConsumerIdleTimeout: consumers of the group idle for longer than this
	// and with nothing pending are deleted (left over by workers that died).
	// Default 1h; negative: never.
	ConsumerIdleTimeout time.Duration
	// RunsCleanupInterval is how often the worker deletes the runs recorded
	// (the group's runs hash, docs/wire.md rule 8) for entries no longer
	// pending in the group: those another consumer, or a worker of another
	// kind, acknowledged (lua/runsgc.lua, one HSCAN batch of each stream's
	// hash a round). Default 1m; negative: never.
	RunsCleanupInterval time.Duration
	// Logger receives the worker's logs. Default: discard.
	Logger *slog.Logger
	// OnHandled, if set, is called after every handler call with its
	// duration and result (nil on success): a seam for metrics. It must be
	// safe for concurrent use and fast.
	OnHandled func(m *Message, took time.Duration, err error)
}

// Validate reports every problem of the configuration at once.
func (c *Config) Validate() error {
	var errs []error
	if c.Redis == nil {
		errs = append(errs, errors.New("worker: Redis client is required"))
	}
	if c.Handler == nil {
		errs = append(errs, errors.New("worker: Handler is required"))
	}
	neg := func(name string, d time.Duration) {
		if d < 0 {
			errs = append(errs, fmt.Errorf("worker: %s %v must not be negative", name, d))
		}
	}
	if c.Concurrency < 0 {
		errs = append(errs, fmt.Errorf("worker: concurrency %d must not be negative", c.Concurrency))
	}
	if c.ReadAhead < 0 {
		errs = append(errs, fmt.Errorf("worker: read-ahead %d must not be negative", c.ReadAhead))
	}
	if c.MaxDeliveries < 0 {
		errs = append(errs, fmt.Errorf("worker: max deliveries %d must not be negative", c.MaxDeliveries))
	}
	if c.AckBatch < 0 {
		errs = append(errs, fmt.Errorf("worker: ack batch %d must not be negative", c.AckBatch))
	}
	neg("visibility timeout", c.VisibilityTimeout)
	neg("reclaim interval", c.ReclaimInterval)
	neg("backoff min", c.BackoffMin)
	neg("backoff max", c.BackoffMax)
	neg("max transient time", c.MaxTransientTime)
	neg("ack interval", c.AckInterval)
	neg("block timeout", c.BlockTimeout)
	neg("discovery interval", c.DiscoveryInterval)
	neg("shutdown timeout", c.ShutdownTimeout)
	if c.VisibilityTimeout > 0 && c.VisibilityTimeout < 30*time.Millisecond {
		errs = append(errs, fmt.Errorf("worker: visibility timeout %v is too short (at least 30ms)", c.VisibilityTimeout))
	}
	if c.BackoffMin > 0 && c.BackoffMax > 0 && c.BackoffMax < c.BackoffMin {
		errs = append(errs, fmt.Errorf("worker: backoff max %v must not be below backoff min %v", c.BackoffMax, c.BackoffMin))
	}
	vis := c.VisibilityTimeout
	if vis == 0 {
		vis = DefaultVisibilityTimeout
	}
	if c.BlockTimeout > vis/3 && c.BlockTimeout > DefaultBlockTimeout {
		errs = append(errs, fmt.Errorf("worker: block timeout %v must not exceed a third of the visibility timeout %v", c.BlockTimeout, vis))
	}
	return errors.Join(errs...)
}

// withDefaults returns a copy of c with the defaults filled in.
func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = wire.DefaultPrefix
	}
	if c.Group == "" {
		c.Group = DefaultGroup
	}
	if c.Consumer == "" {
		c.Consumer = DefaultConsumerName()
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.ReadAhead == 0 {
		c.ReadAhead = c.Concurrency
	}
	if c.VisibilityTimeout == 0 {
		c.VisibilityTimeout = DefaultVisibilityTimeout
	}
	if c.ReclaimInterval == 0 {
		c.ReclaimInterval = min(max(c.VisibilityTimeout/4, 10*time.Millisecond), 5*time.Second)
	}
	if c.MaxDeliveries == 0 {
		c.MaxDeliveries = DefaultMaxDeliveries
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = DefaultBackoffMin
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = max(DefaultBackoffMax, c.BackoffMin)
	}
	if c.MaxTransientTime == 0 {
		c.MaxTransientTime = DefaultMaxTransientTime
	}
	if c.AckInterval == 0 {
		c.AckInterval = DefaultAckInterval
	}
	if c.AckBatch == 0 {
		c.AckBatch = DefaultAckBatch
	}
	if c.BlockTimeout == 0 {
		c.BlockTimeout = min(DefaultBlockTimeout, c.VisibilityTimeout/3)
	}
	if c.DiscoveryInterval == 0 {
		c.DiscoveryInterval = DefaultDiscoveryInterval
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.ConsumerIdleTimeout == 0 {
		c.ConsumerIdleTimeout = DefaultConsumerIdle
	}
	if c.RunsCleanupInterval == 0 {
		c.RunsCleanupInterval = DefaultRunsCleanupInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// DefaultConsumerName returns a consumer name unique to this process:
// "<hostname>-<pid>-<random hex>".
func DefaultConsumerName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "worker"
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	return host + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:])
}

// backoff returns the wait before the retry that follows delivery n (n >= 1).
func (c *Config) backoff(n int64) time.Duration {
	d := c.BackoffMin
	for i := int64(1); i < n && d < c.BackoffMax; i++ {
		d *= 2
	}
	return min(d, c.BackoffMax)
}
