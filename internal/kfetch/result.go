package kfetch

import (
	"github.com/kbridge/kbridge/internal/wire"
)

// Result is what one fetch brought for one partition.
//
// The contract: every record at an offset in [Offset, Next) that a consumer
// with the Fetcher's isolation level would deliver is in Records, in offset
// order; the other offsets of that range hold nothing to deliver (control
// batches, aborted transactions, compacted or deleted records). So once all
// of Records are processed, Next may be committed.
//
// Records alias the Result's buffers: they are valid until Release, and must
// be copied to be kept longer. A Result is used by one goroutine.
type Result struct {
	Topic     string
	Partition int

	// Offset is the offset the fetch started at (the partition's position).
	Offset int64
	// Records are the deliverable records, Offset ≤ offset < Next.
	Records []wire.Record
	// Next is the position after everything examined: where the next
	// Result starts. Next ≥ Offset; Next == Offset only with Err.
	Next int64

	// HighWatermark, LastStableOffset and LogStartOffset are the
	// partition's, as the broker answered this fetch (-1: unknown).
	HighWatermark    int64
	LastStableOffset int64
	LogStartOffset   int64

	// Err, if not nil, is a *PartitionError: the partition's fetching
	// stopped at Next (Records before it are good) and resumes only after
	// Partition.SetOffset. errors.Is(Err, kafka.OffsetOutOfRange) tells an
	// offset outside the log; a *CorruptError an unreadable batch.
	// Retriable errors (leader moved, broker down, timeouts) are never
	// reported here: the Fetcher retries them with backoff.
	Err error

	// Bytes is the size of the record set fetched; Aborted the records of
	// aborted transactions skipped; Control the transaction markers
	// skipped.
	Bytes   int
	Aborted int64
	Control int

	f       *Fetcher
	set     []byte  // the fetched record set (pooled)
	batches []batch // deliverable batches in set
	bufs    [][]byte
	charged int64 // bytes of the budget this result holds
	done    bool
}

// Release returns the Result's memory to the budget and its buffers to the
// pools. Records must not be used afterwards. Release is idempotent; a nil
// Result is fine.
func (r *Result) Release() {
	if r == nil || r.done {
		return
	}
	r.done = true
	putBuf(r.set)
	for _, b := range r.bufs {
		putBuf(b)
	}
	putRecords(r.Records)
	r.set, r.bufs, r.Records, r.batches = nil, nil, nil, nil
	if r.f != nil && r.charged != 0 {
		r.f.uncharge(r.charged)
	}
	r.charged = 0
}
