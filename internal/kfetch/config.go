package kfetch

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/segmentio/kafka-go"
)

// IsolationLevel says which records a fetch delivers.
type IsolationLevel int8

const (
	// ReadCommitted (the zero value, the default) delivers only records of
	// committed transactions and non-transactional records, and reads no
	// further than the last stable offset: records of open transactions
	// wait, aborted ones are skipped.
	ReadCommitted IsolationLevel = iota
	// ReadUncommitted delivers every record up to the high watermark,
	// aborted and open transactions included.
	ReadUncommitted
)

// String returns the name Kafka uses: read_committed or read_uncommitted.
func (l IsolationLevel) String() string {
	switch l {
	case ReadCommitted:
		return "read_committed"
	case ReadUncommitted:
		return "read_uncommitted"
	}
	return fmt.Sprintf("IsolationLevel(%d)", int8(l))
}

// ParseIsolationLevel parses read_committed or read_uncommitted.
func ParseIsolationLevel(s string) (IsolationLevel, error) {
	switch s {
	case "read_committed":
		return ReadCommitted, nil
	case "read_uncommitted":
		return ReadUncommitted, nil
	}
	return 0, fmt.Errorf("isolation level %q: want read_committed or read_uncommitted", s)
}

// wire value of the fetch request's isolation_level field
func (l IsolationLevel) wire() int8 {
	if l == ReadCommitted {
		return 1
	}
	return 0
}

// DefaultBatchMaxBytes is the least default of Config.BatchMaxBytes: what
// one batch may take decompressed when MemoryBytes is smaller.
const DefaultBatchMaxBytes = 64 << 20

// Config configures a Fetcher. The zero value of every field but Client
// means its default.
type Config struct {
	// Client names the cluster (Addr) and carries the connections (its
	// Transport: TLS, SASL, dialer). Required. Its Timeout is not used:
	// see MaxWait and RequestTimeout.
	Client *kafka.Client

	// ClientID is sent with every request. Default "kbridge".
	ClientID string

	// Isolation is read_committed (default) or read_uncommitted.
	Isolation IsolationLevel

	// MemoryBytes is the budget, in bytes, for all fetched data of the
	// process: record sets in flight, buffered, and held by callers until
	// Result.Release, with their decoding buffers. Partitions that cannot
	// be fetched within it wait. Each request in flight can exceed it by
	// one record batch larger than PartitionMaxBytes (Kafka returns the
	// first batch of a fetch whole, however large); and each result being
	// read by one decompressed batch (at most BatchMaxBytes) when its
	// batches decompress to more than the fetcher has learned a fetched
	// byte costs. Default 64 MiB.
	MemoryBytes int64

	// MaxBytes is the response size limit of one fetch request (Kafka's
	// fetch.max.bytes). Default min(8 MiB, MemoryBytes).
	MaxBytes int32

	// PartitionMaxBytes is the limit per partition within a request
	// (Kafka's max.partition.fetch.bytes). Default 1 MiB.
	PartitionMaxBytes int32

	// BatchMaxBytes is the most one record batch may take once
	// decompressed: a guard against a zip bomb, not a part of the budget.
	// Kafka bounds a batch's compressed size only, and a highly
	// compressible batch of 1 MiB can inflate to hundreds. A batch within
	// it is read even when it is larger than what is left of MemoryBytes,
	// or than MemoryBytes itself (the budget is then exceeded by up to
	// this much while the batch is read); one beyond it is reported as a
	// *CorruptError with TooLarge set (the partition stops there until
	// SetOffset). Default max(MemoryBytes, 64 MiB); below 2 GiB.
	BatchMaxBytes int64

	// MaxWait is how long the broker holds a fetch that has no data yet.
	// Default 500ms.
	MaxWait time.Duration

	// MaxInFlight is the number of concurrent fetch requests per broker;
	// at most one of them waits at the log end (a long poll), the others
	// carry partitions that have data. Default 3.
	MaxInFlight int

	// RequestTimeout bounds a request beyond MaxWait (dial, TLS, SASL,
	// transfer). Default 30s.
	RequestTimeout time.Duration

	// Logger receives retries (warn) and state changes; nil discards.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.ClientID == "" {
		c.ClientID = "kbridge"
	}
	if c.MemoryBytes == 0 {
		c.MemoryBytes = 64 << 20
	}
	if c.PartitionMaxBytes == 0 {
		c.PartitionMaxBytes = 1 << 20
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = int32(min(8<<20, c.MemoryBytes))
	}
	if c.BatchMaxBytes == 0 {
		c.BatchMaxBytes = min(max(c.MemoryBytes, DefaultBatchMaxBytes), math.MaxInt32)
	}
	if c.MaxWait == 0 {
		c.MaxWait = 500 * time.Millisecond
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 3
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports every problem of c (after defaults) at once.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.Client == nil || c.Client.Addr == nil {
		errs = append(errs, errors.New("kfetch: Client with the cluster's Addr is required"))
	}
	if c.Isolation != ReadCommitted && c.Isolation != ReadUncommitted {
		errs = append(errs, fmt.Errorf("kfetch: isolation level %d: want read_committed or read_uncommitted", c.Isolation))
	}
	if c.MemoryBytes < 0 {
		errs = append(errs, fmt.Errorf("kfetch: memory budget %d bytes must be positive", c.MemoryBytes))
	}
	if c.MaxBytes < 0 {
		errs = append(errs, fmt.Errorf("kfetch: request max bytes %d must be positive", c.MaxBytes))
	}
	if c.PartitionMaxBytes < 0 {
		errs = append(errs, fmt.Errorf("kfetch: partition max bytes %d must be positive", c.PartitionMaxBytes))
	}
	if c.MemoryBytes > 0 && c.PartitionMaxBytes > 0 && int64(c.PartitionMaxBytes) > c.MemoryBytes {
		errs = append(errs, fmt.Errorf("kfetch: partition max bytes %d must not exceed the memory budget %d: no partition could ever be fetched",
			c.PartitionMaxBytes, c.MemoryBytes))
	}
	if c.MemoryBytes > 0 && c.MaxBytes > 0 && int64(c.MaxBytes) > c.MemoryBytes {
		errs = append(errs, fmt.Errorf("kfetch: request max bytes %d must not exceed the memory budget %d", c.MaxBytes, c.MemoryBytes))
	}
	if c.BatchMaxBytes < 0 || c.BatchMaxBytes > math.MaxInt32 {
		errs = append(errs, fmt.Errorf("kfetch: batch max bytes %d must be positive and below 2 GiB", c.BatchMaxBytes))
	}
	if c.MaxWait < 0 || c.MaxWait > time.Hour {
		errs = append(errs, fmt.Errorf("kfetch: max wait %v must be between 0 and 1h", c.MaxWait))
	}
	if c.MaxInFlight < 0 {
		errs = append(errs, fmt.Errorf("kfetch: max in flight %d must be positive", c.MaxInFlight))
	}
	if c.RequestTimeout < 0 {
		errs = append(errs, fmt.Errorf("kfetch: request timeout %v must be positive", c.RequestTimeout))
	}
	return errors.Join(errs...)
}
