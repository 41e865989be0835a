package kfetch

import (
	"errors"
	"fmt"

	"github.com/segmentio/kafka-go"
)

// ErrClosed is returned by Partition.Next after the partition was closed or
// the Fetcher stopped, and by Add once the Fetcher stopped.
var ErrClosed = errors.New("kfetch: closed")

// ErrBrokerTooOld is the error of a fetch from a broker that does not speak
// Fetch v4 (Kafka < 0.11): it cannot report transactions.
var ErrBrokerTooOld = errors.New("kfetch: broker does not support Fetch v4 (Kafka 0.11+ needed)")

// ErrNoData is a partition's State().Err while the broker keeps answering
// its fetches with no records although its bound (last stable offset or
// high watermark) is above its position: a tiered-storage read that never
// completes in time, a quota, a preferred read replica. The partition is
// asked again with backoff; its position does not move.
var ErrNoData = errors.New("kfetch: the broker answers no records below the partition's bound; asking again")

// PartitionError is a per-partition error of a fetch that the Fetcher does
// not retry by itself (see Result.Err). Err is a kafka.Error (match with
// errors.Is(err, kafka.OffsetOutOfRange)) or a *CorruptError.
type PartitionError struct {
	Topic     string
	Partition int
	Offset    int64 // the offset fetched
	Err       error
}

func (e *PartitionError) Error() string {
	return fmt.Sprintf("fetch %s/%d at offset %d: %v", e.Topic, e.Partition, e.Offset, e.Err)
}

func (e *PartitionError) Unwrap() error { return e.Err }

// CorruptError is a record set that cannot be read: a CRC mismatch, a
// malformed batch or record, a failed decompression, a message format older
// than record batch v2 (Unsupported), or a batch that decompresses to more
// than Config.BatchMaxBytes (TooLarge: the data may be sound, the limit is
// too low for it). Offset is where it starts.
type CorruptError struct {
	Offset      int64
	Reason      string
	Unsupported bool
	// TooLarge: the batch decompresses to more than Limit bytes; it is
	// Compressed bytes in the log. Fetching it needs a higher
	// Config.BatchMaxBytes.
	TooLarge   bool
	Limit      int64
	Compressed int
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("unreadable record batch at offset %d: %s", e.Offset, e.Reason)
}

func corrupt(offset int64, format string, args ...any) error {
	return &CorruptError{Offset: offset, Reason: fmt.Sprintf(format, args...)}
}

// retriable reports whether a partition error code is one the Fetcher
// handles itself (refresh the leader, back off, fetch again), as Kafka's
// consumer does; the others end the partition's fetching until SetOffset.
func retriable(code int16) bool {
	e := kafka.Error(code)
	return e == kafka.Unknown || e.Temporary() || e == kafka.ReplicaNotAvailable || e == kafka.BrokerNotAvailable
}
