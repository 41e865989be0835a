package kfetch

import (
	"context"
	"fmt"
	"time"
)

// Partition is the handle of one partition being fetched. Next is meant for
// one goroutine (the partition's consumer); the other methods may be called
// from any goroutine.
type Partition struct {
	f         *Fetcher
	topic     string
	partition int32
	intern    interner // header names, used by Result.Read only
	ready     chan struct{}

	// guarded by f.mu
	pos      int64  // where the next Result starts
	epoch    uint64 // bumped whenever what is in flight or buffered is no longer wanted
	moves    uint64 // bumped by SetOffset and Close: the caller moved the position
	paused   bool
	closed   bool
	failed   bool // a PartitionError was delivered: no fetching until SetOffset
	inflight bool
	starved  bool // got nothing while behind: goes first in the next request
	buffered *Result
	leader   int32
	retryAt  time.Time
	backoff  backoff // retriable errors
	// emptyBackoff grows while answers bring nothing below the bound;
	// empties counts them
	emptyBackoff backoff
	empties      int
	hwm          int64
	lso          int64
	logStart     int64
	lastErr      error
	fetches      int64
}

// PartitionState is a snapshot of a Partition.
type PartitionState struct {
	// Position is where the next Result starts: the Next of the last one
	// returned, or the offset of Add/SetOffset.
	Position int64
	// HighWatermark, LastStableOffset, LogStartOffset as of the last
	// fetch answered without error (-1 before).
	HighWatermark    int64
	LastStableOffset int64
	LogStartOffset   int64
	Paused           bool
	Leader           int32 // broker ID; -1 while unknown
	Fetches          int64 // times the partition was in a fetch request
	// Err is the last retriable error (leader unknown, broker down...),
	// nil once a fetch succeeded.
	Err error
}

// Next returns the partition's next Result, waiting for it until ctx is
// done. Taking a Result lets the Fetcher fetch the one after it at once, so
// the next one is usually ready by the time the caller has processed this
// one. The caller must Release every Result. After the partition is closed
// or the Fetcher stopped, Next returns ErrClosed.
func (p *Partition) Next(ctx context.Context) (*Result, error) {
	for {
		if r, err := p.Poll(); r != nil || err != nil {
			return r, err
		}
		select {
		case <-p.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Poll is Next without the wait: it returns the next Result if one is
// ready, nil if not (then Ready says when to poll again), or ErrClosed.
func (p *Partition) Poll() (*Result, error) {
	f := p.f
	f.mu.Lock()
	if r := p.buffered; r != nil {
		p.buffered = nil
		p.pos = r.Next
		r.moves = p.moves
		f.mu.Unlock()
		f.kick()
		return r, nil
	}
	closed := p.closed || f.state == stateStopped
	f.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	return nil, nil
}

// Ready returns a channel that receives when a Result may have become ready
// (or the partition closed) since the last receive: a caller that selects
// on it among other events polls (Poll) after each receive. One channel per
// partition, for its one consumer; Next receives from it too.
func (p *Partition) Ready() <-chan struct{} { return p.ready }

// deliver makes r the buffered result. Called with f.mu held.
func (p *Partition) deliver(r *Result) {
	p.buffered = r
	p.signal()
}

func (p *Partition) signal() {
	select {
	case p.ready <- struct{}{}:
	default:
	}
}

// SetOffset makes the next Result start at offset (≥ 0): what was fetched
// ahead is dropped, and a partition stopped by an error fetches again. A
// negative offset (a "first"/"last" sentinel) is refused: resolve it first.
func (p *Partition) SetOffset(offset int64) error {
	if offset < 0 {
		return fmt.Errorf("kfetch: set offset of %s/%d: offset %d: resolve it to an offset first", p.topic, p.partition, offset)
	}
	f := p.f
	f.mu.Lock()
	p.epoch++
	p.moves++
	p.pos = offset
	p.failed, p.starved = false, false
	p.retryAt, p.emptyBackoff, p.empties = time.Time{}, backoff{}, 0
	r := p.buffered
	p.buffered = nil
	f.mu.Unlock()
	r.Release()
	f.kick()
	return nil
}

// stopAt stops the partition at offset after a Result that ended at end
// met a record it cannot decode (Result.Read): unless the caller moved the
// partition since it took that Result (SetOffset, Close; moves differs) or
// the position is already below end, the position goes back to offset, the
// fetch begun ahead is dropped and so is a result buffered ahead — taking
// it would skip the records from offset to its start.
func (p *Partition) stopAt(offset, end int64, moves uint64) {
	f := p.f
	f.mu.Lock()
	if p.closed || p.moves != moves || p.pos < end {
		f.mu.Unlock()
		return
	}
	p.pos = offset
	p.failed = true
	p.starved = false
	p.epoch++ // what is in flight answers for the old position
	r := p.buffered
	p.buffered = nil
	f.mu.Unlock()
	r.Release()
}

// Pause stops fetching the partition (backpressure) and drops what was
// fetched ahead, returning its memory: a paused partition holds none of the
// budget. Resume fetches again from the position.
func (p *Partition) Pause() {
	f := p.f
	f.mu.Lock()
	if p.paused {
		f.mu.Unlock()
		return
	}
	p.paused = true
	p.epoch++
	r := p.buffered
	p.buffered = nil
	f.mu.Unlock()
	r.Release()
}

// Resume undoes Pause.
func (p *Partition) Resume() {
	f := p.f
	f.mu.Lock()
	p.paused = false
	f.mu.Unlock()
	f.kick()
}

// Close stops fetching the partition for good and releases what was fetched
// ahead; Next returns ErrClosed. Close is idempotent.
func (p *Partition) Close() {
	f := p.f
	f.mu.Lock()
	if p.closed {
		f.mu.Unlock()
		return
	}
	p.closed = true
	p.epoch++
	p.moves++
	r := p.buffered
	p.buffered = nil
	delete(f.parts, tp{p.topic, p.partition})
	for i, q := range f.order {
		if q == p {
			last := len(f.order) - 1
			f.order[i] = f.order[last]
			f.order[last] = nil
			f.order = f.order[:last]
			break
		}
	}
	p.signal()
	f.mu.Unlock()
	r.Release()
	f.kick()
}

// State returns a snapshot of the partition.
func (p *Partition) State() PartitionState {
	f := p.f
	f.mu.Lock()
	defer f.mu.Unlock()
	return PartitionState{
		Position: p.pos, HighWatermark: p.hwm, LastStableOffset: p.lso, LogStartOffset: p.logStart,
		Paused: p.paused, Leader: p.leader, Fetches: p.fetches, Err: p.lastErr,
	}
}

// bound is the offset below which the broker returns data at this
// isolation level (-1 unknown). Called with f.mu held.
func (p *Partition) bound(iso IsolationLevel) int64 {
	if iso == ReadCommitted {
		return p.lso
	}
	return p.hwm
}

// atTail reports whether the partition has nothing more to fetch as of its
// last answer. Called with f.mu held.
func (p *Partition) atTail(iso IsolationLevel) bool {
	b := p.bound(iso)
	if b < 0 {
		b = p.hwm
	}
	return b >= 0 && p.pos >= b
}
