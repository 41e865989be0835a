package kfetch

import (
	"github.com/kbridge/kbridge/internal/wire"
)

// Result is what one fetch brought for one partition.
//
// The contract: every record at an offset in [Offset, Next) that a consumer
// with the Fetcher's isolation level would deliver is returned by Read, in
// offset order; the other offsets of that range hold nothing to deliver
// (control batches, aborted transactions, compacted or deleted records). So
// once everything Read returned is processed, Next may be committed.
//
// Records are decoded lazily by Read, a chunk at a time, and only the batch
// being read is decompressed (as Kafka's consumer does): the memory a Result
// holds is its record set plus one chunk. A Result is used by one goroutine
// (the partition's consumer), and must be Released.
type Result struct {
	Topic     string
	Partition int

	// Offset is the offset the fetch started at (the partition's position).
	Offset int64
	// Next is the position after everything examined: where the next
	// Result starts. Next ≥ Offset; Next == Offset only with Err. If Read
	// meets a record it cannot decode, Next moves back to that record.
	Next int64

	// HighWatermark, LastStableOffset and LogStartOffset are the
	// partition's, as the broker answered this fetch (-1: unknown).
	HighWatermark    int64
	LastStableOffset int64
	LogStartOffset   int64

	// Err, if not nil, is a *PartitionError: the partition's fetching
	// stopped at Next (the records before it are good) and resumes only
	// after Partition.SetOffset. errors.Is(Err, kafka.OffsetOutOfRange)
	// tells an offset outside the log; a *CorruptError an unreadable
	// batch (found when fetched, or by Read). Retriable errors (leader
	// moved, broker down, timeouts) are never reported here: the Fetcher
	// retries them with backoff.
	Err error

	// Bytes is the size of the record set fetched; Aborted the records of
	// aborted transactions skipped; Control the transaction markers
	// skipped.
	Bytes   int
	Aborted int64
	Control int

	f       *Fetcher
	p       *Partition
	moves   uint64 // the partition's moves when the result was taken
	set     []byte // the fetched record set (pooled)
	cur     cursor
	charged int64 // bytes of the budget this result holds
	// spare is the part of charged not used yet: what the request had
	// reserved for decoding beyond the record set. Read's buffers draw on
	// it before charging more.
	spare int64
	done  bool
}

// Len returns the number of records the result's batches hold from the
// ones not read yet: an upper bound of what Read will return.
func (r *Result) Len() int { return r.cur.remaining() }

// Read decodes and returns the next records, at most limit (≤ 0: all the
// rest), in offset order. They alias the Result's buffers and are valid
// until the next Read or Release: copy what must live longer. At the end,
// Read returns no records and a nil error.
//
// If a record cannot be decoded, Read returns the records before it with a
// *PartitionError (also in Err); Next becomes the offset after the last
// record returned, and the partition stops until Partition.SetOffset.
func (r *Result) Read(limit int) ([]wire.Record, error) {
	if r.done {
		return nil, ErrClosed
	}
	if limit <= 0 {
		limit = r.cur.remaining()
		if limit == 0 {
			return nil, nil
		}
	}
	recs, err := r.cur.read(limit, r.grow)
	if r.f != nil {
		r.f.records.Add(int64(len(recs)))
	}
	if err != nil {
		r.fail(err)
		return recs, r.Err
	}
	return recs, nil
}

// grow accounts n more bytes of decoding buffers: from the spare first,
// then charged to the budget.
func (r *Result) grow(n int64) {
	if n <= 0 {
		return
	}
	from := min(n, r.spare)
	r.spare -= from
	if n -= from; n > 0 {
		r.charged += n
		if r.f != nil {
			r.f.charge(n)
		}
	}
}

// fail ends the result at the record that could not be decoded and stops
// the partition there.
func (r *Result) fail(err error) {
	end := r.Next
	r.Next = max(r.Offset, r.cur.last+1)
	r.Err = &PartitionError{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Err: err}
	if r.p != nil {
		r.p.stopAt(r.Next, end, r.moves)
	}
}

// Release returns the Result's memory to the budget and its buffers to the
// pools. Nothing Read returned may be used afterwards. Release is
// idempotent; a nil Result is fine.
func (r *Result) Release() {
	if r == nil || r.done {
		return
	}
	r.done = true
	// Only a result read to the end shows what decoding a fetched byte
	// takes: one dropped unread (Pause, SetOffset, Close, shutdown) or
	// cut short by an error would teach the estimator a cost near 1.
	learn := r.Err == nil && len(r.cur.batches) > 0 && r.cur.remaining() == 0
	putBuf(r.set)
	r.set = nil
	r.cur.release()
	if r.f != nil && r.charged != 0 {
		size := r.Bytes
		if !learn {
			size = 0
		}
		r.f.uncharge(r.charged, r.charged-r.spare, size)
	}
	r.charged, r.spare = 0, 0
}
