package tracker

import "fmt"

// None marks an absent offset in a Group or an Observation.
const None int64 = -1

// Group is one worker consumer group on a stream, as Redis reported it.
type Group struct {
	// Name of the consumer group.
	Name string
	// Missing is true when the group does not exist on the stream (Redis
	// lost it): nothing can be known about its progress.
	Missing bool
	// Pending is the number of entries delivered but not acknowledged.
	Pending int64
	// LowestPending is the offset of the lowest pending entry, or None.
	LowestPending int64
	// NextUndelivered is the offset of the first entry after the group's
	// last-delivered-id, or None when the group has been delivered every
	// entry in the stream.
	NextUndelivered int64
}

// Frontier returns the lowest offset that the group has not acknowledged,
// given the stream's top (the offset of its last-generated-id, or None).
func (g Group) Frontier(top int64) int64 {
	f := top + 1
	if g.LowestPending != None && g.LowestPending < f {
		f = g.LowestPending
	}
	if g.NextUndelivered != None && g.NextUndelivered < f {
		f = g.NextUndelivered
	}
	return f
}

// Observation is one atomic snapshot of a partition stream.
type Observation struct {
	// Exists is false when the stream key does not exist.
	Exists bool
	// Top is the offset of the stream's last-generated-id, None when nothing
	// was ever appended. It survives XTRIM and XDEL.
	Top int64
	// Length is XLEN: the entries still in the stream.
	Length int64
	// Groups holds one entry per consumer group that exists on the stream,
	// plus one (Missing) per configured group that does not: every group on
	// the stream holds the commit, whoever created it (invariant 2).
	Groups []Group
	// TopEntry says what the entry with the ID of Top is: a record kbridge
	// wrote (the zero value, also "not looked at"), an entry another
	// program wrote, or none (deleted or trimmed). See Partition.Stray.
	TopEntry TopEntry
	// RecordBelow is, when TopEntry is not TopRecord, the offset of the
	// highest record kbridge wrote below Top, None when none was found
	// (the entries below were trimmed, or too many are not records). See
	// Partition.Found.
	RecordBelow int64
}

// TopEntry is what the entry at a stream's top is.
type TopEntry int8

const (
	// TopRecord: a record kbridge wrote (ID <offset>-1, its fields).
	TopRecord TopEntry = iota
	// TopForeign: an entry kbridge did not write (another program's XADD).
	TopForeign
	// TopGone: the entry was deleted (XDEL) or trimmed; only its ID is
	// left, as the stream's last-generated-id.
	TopGone
)

// Stray says why a stream's top cannot be a record of the partition.
type Stray int8

const (
	// NotStray: the top can be a record (kbridge's, appended by this
	// ingest or by another owner of the partition).
	NotStray Stray = iota
	// StrayForeign: the entry at the top was not written by kbridge.
	StrayForeign
	// StrayDeleted: the entry at the top is gone, though kbridge never
	// removes it: it trims only below the committed offset, and nothing
	// above what this ingest appended. Another program's entry, deleted
	// without setting the stream's top back (or the group's offsets were
	// reset below the stream).
	StrayDeleted
	// StrayAboveLogEnd: the top is at or above the partition's log end
	// (another program's entry, or the topic was recreated).
	StrayAboveLogEnd
)

func (s Stray) String() string {
	switch s {
	case NotStray:
		return "not stray"
	case StrayForeign:
		return "not written by kbridge"
	case StrayDeleted:
		return "deleted"
	case StrayAboveLogEnd:
		return "above the log end"
	}
	return fmt.Sprintf("Stray(%d)", int8(s))
}

// Frontier returns the lowest offset not acknowledged by every group, and
// false when it cannot be known (the stream or a group is missing, or no
// group is configured).
func (o Observation) Frontier() (int64, bool) {
	if !o.Exists || len(o.Groups) == 0 {
		return 0, false
	}
	f := o.Top + 1
	for _, g := range o.Groups {
		if g.Missing {
			return 0, false
		}
		if gf := g.Frontier(o.Top); gf < f {
			f = gf
		}
	}
	return f, true
}

// Decision is what a Partition concluded from an Observation.
type Decision struct {
	// Commit is the offset to commit to Kafka (the next offset to consume).
	// It is valid only when ShouldCommit is true.
	Commit int64
	// ShouldCommit is true when Commit is above the last committed offset.
	ShouldCommit bool
	// Lost is true when Redis lost writes: the stream is gone, or its top is
	// below what was appended. The caller must recreate the worker groups at
	// ID 0, call Reset with the stream's top as it is now, and fetch again
	// from Position (which then returns Rewind).
	Lost bool
	// RecreateGroups is true when the stream or a configured group is missing.
	RecreateGroups bool
	// Rewind is the offset to fetch from after a loss: max(committed, top+1),
	// top read after the loss. Without a commit in Kafka it is
	// max(top+1, floor) (see Position); None when nothing at all is known:
	// the caller then resolves its configured start offset, as at first.
	Rewind int64
	// Backlog is the number of offsets appended but not acknowledged by every
	// group (top+1 - frontier); with Kafka gaps (compaction, transaction
	// markers) it counts high, so backpressure errs on the safe side.
	Backlog int64
	// Ahead is true when the stream's top is above every offset this ingest
	// appended or found at assignment: another ingest appended (a zombie of
	// an old generation: harmless), or another program wrote into the stream
	// (an entry at or above the log end cannot be a record). Stray tells
	// them apart; the commit never follows the top there (see Observe).
	Ahead bool
	// Stray is not NotStray when the stream's top cannot be a record of the
	// partition (see Partition.Stray): appending on top of it would skip the
	// partition's next records as "already there", and a group that read it
	// would hold a frontier above records it was never delivered. Nothing is
	// committed (ShouldCommit is false); the caller stops fetching until it
	// is gone, then — before it appends again — sets back every group whose
	// last-delivered-id is above the new top (XGROUP SETID), or the records
	// appended next are never delivered to it.
	Stray Stray
}

// Partition tracks one partition's commit point. It is not safe for
// concurrent use; the ingest keeps one per assigned partition.
type Partition struct {
	committed int64 // last offset committed to Kafka, None if none
	// appended is the highest offset of a Kafka record known to be in the
	// stream: appended by this ingest (or found there by its own append),
	// or the stream's top at assignment. None if none. It never follows a
	// top that grew by other hands: those entries are not known records.
	appended int64
	// covered is the offset below which every record of the partition is
	// accounted for: in the stream (appended+1) or known to hold nothing to
	// deliver (Skipped: transaction markers, compacted gaps, aborted
	// records). Commits never pass it. None if nothing is known.
	covered  int64
	logEnd   int64 // the partition's log end as last seen (SetLogEnd), None if unknown
	frontier int64 // last known frontier, None if unknown
	// floor stands in for a commit Kafka does not have (yet): the lowest
	// offset this group is responsible for, below which every record was
	// acknowledged or never wanted. It is the configured start offset as
	// resolved by Position, or the lowest frontier observed on a stream that
	// was found without a commit (a hand-over before the first commit).
	// Observe offers it for commit at once, so "no commit" does not outlive
	// the first commit interval. None when unknown.
	floor int64
}

// NewPartition starts tracking from the offset committed in Kafka (None when
// the group has none) and the stream's top as read at assignment.
func NewPartition(committed, top int64) *Partition {
	return &Partition{committed: committed, appended: top, covered: next(top), logEnd: None, frontier: None, floor: None}
}

// next is off+1, None for None.
func next(off int64) int64 {
	if off == None {
		return None
	}
	return off + 1
}

// Committed returns the last committed offset, or None.
func (p *Partition) Committed() int64 { return p.committed }

// Appended returns the highest offset known to be in the stream, or None.
func (p *Partition) Appended() int64 { return p.appended }

// Start returns the offset to fetch from: max(committed, appended+1); without
// a commit, max(appended+1, floor). It is None when nothing is known (a new
// group on a new stream): see Position.
//
// Only the commit, the stream's top and the floor (at or below every record
// not yet acknowledged) count. In particular, the top read at assignment is
// not where this group started: after Reset (Redis lost the stream), Start is
// max(committed, top+1) with the top read after the loss, so the entries
// that only lived in Redis are fetched again (invariant 5).
func (p *Partition) Start() int64 { return startAt(p.committed, p.appended, p.floor) }

func startAt(committed, appended, floor int64) int64 {
	switch {
	case committed != None:
		return max(committed, appended+1)
	case appended != None:
		return max(appended+1, floor)
	}
	return floor
}

// Position returns the offset to fetch from at assignment and after a loss
// (Reset): Start, or, when nothing says where to start, the configured start
// offset resolve returns (the log start for "earliest", the log end for
// "latest"). A resolved offset becomes the floor: the next Observe offers it
// for commit even while the stream is empty, and a loss of Redis before the
// first commit rewinds to it instead of resolving "latest" again, which would
// skip every record appended, or produced, since. resolve is called only when
// needed, and its error returned as is.
func (p *Partition) Position(resolve func() (int64, error)) (int64, error) {
	if off := p.Start(); off != None {
		return off, nil
	}
	off, err := resolve()
	if err != nil {
		return None, err
	}
	p.floor = off
	if p.logEnd != None {
		// The resolved offset was in the log when it was read: a log end
		// read before it ("latest" moved since) must not clamp the floor's
		// commit below itself.
		p.logEnd = max(p.logEnd, off)
	}
	return off, nil
}

// MarkAppended records that the partition's records up to off — fetched from
// Kafka, so real records — are in the stream: appended by this ingest, or
// found there already (a retry, another ingest). Pass the offset of the last
// record of the batch, not the stream's top: a top written by other hands is
// not a record, and commits must not follow it.
func (p *Partition) MarkAppended(off int64) {
	p.appended = max(p.appended, off)
	p.covered = max(p.covered, off+1)
}

// Skipped records that the offsets in [from, to) hold no record to deliver:
// transaction markers, records compacted away, aborted transactional records
// — as the fetch layer found them (a fetch that returned nothing deliverable
// below to). It counts only when it continues what is accounted for (from is
// at or below the commit, the floor or what the stream covers); commits may
// then reach to, so that a partition whose every record is acknowledged
// commits its log end. It never raises the fetch position: the caller moves
// its own.
func (p *Partition) Skipped(from, to int64) {
	if to <= from {
		return
	}
	if known := max(p.covered, p.committed, p.floor); known != None && from <= known {
		p.covered = max(p.covered, to)
	}
}

// SetLogEnd records the partition's log end offset (high watermark) as the
// fetch layer last saw it. Commits never pass it.
func (p *Partition) SetLogEnd(end int64) { p.logEnd = end }

// Reset is called after Lost: the stream was recreated with top top (None
// when empty). Appended restarts from there, so that the next Start is the
// rewind point.
func (p *Partition) Reset(top int64) {
	p.appended = top
	p.covered = next(top)
	p.frontier = None
}

// Stray reports why the top of o cannot be a record of the partition, or
// NotStray. An entry kbridge did not write is never one. A top whose entry is
// gone is one only below the committed offset (kbridge trims below it) and
// not above what this ingest appended (another owner's records above it are
// still there: they are at or above the commit). A top at or above the log
// end is none either (read the log end afresh before concluding: another
// owner may have appended records this ingest has not fetched yet).
func (p *Partition) Stray(o Observation) Stray {
	if !o.Exists || o.Top == None {
		return NotStray
	}
	switch {
	case o.TopEntry == TopForeign:
		return StrayForeign
	case o.TopEntry == TopGone && (o.Top > p.appended || (p.committed != None && o.Top >= p.committed)):
		return StrayDeleted
	case p.logEnd != None && o.Top >= p.logEnd:
		return StrayAboveLogEnd
	}
	return NotStray
}

// Found checks the stream a partition starts from — at assignment, after
// NewPartition with its top, and after a loss, after Reset — and returns
// Stray(o). When the top cannot be a record, Appended goes back to the highest
// record below it (o.RecordBelow, or the committed offset - 1 when that is
// higher or none was found), so that Start, the commit and the status count
// only records: the stream's top is set back there (XSETID) once the stray
// entry is removed, and the records above it are fetched again.
func (p *Partition) Found(o Observation) Stray {
	st := p.Stray(o)
	if st == NotStray {
		return st
	}
	rec := None
	if o.TopEntry != TopRecord {
		rec = o.RecordBelow
	}
	if p.committed != None {
		rec = max(rec, p.committed-1)
	}
	if rec < p.appended {
		p.Reset(rec)
	}
	return st
}

// MarkCommitted records a successful Kafka commit of off. It never moves the
// commit point backwards.
func (p *Partition) MarkCommitted(off int64) {
	p.committed = max(p.committed, off)
}

// TrimPoint returns the offset below which the stream may be trimmed: below
// both the committed offset and the live frontier, so that no pending entry is
// ever trimmed even when Redis came back from a snapshot older than the
// commit. None means do not trim.
func (p *Partition) TrimPoint() int64 {
	if p.committed == None || p.frontier == None {
		return None
	}
	return min(p.committed, p.frontier)
}

// Observe takes a snapshot of the stream and decides what to commit.
func (p *Partition) Observe(o Observation) Decision {
	var d Decision
	if !o.Exists {
		o.Top = None
	}
	if !o.Exists || o.Top < p.appended {
		d.Lost = true
		d.RecreateGroups = true
		d.Rewind = startAt(p.committed, o.Top, p.floor)
		p.frontier = None
		return d
	}
	// A top above what this ingest knows is not a record it knows of:
	// another owner's append (a zombie), or not a record at all (Stray).
	d.Ahead = o.Top > p.appended
	d.Stray = p.Stray(o)
	f, ok := o.Frontier()
	if !ok {
		d.RecreateGroups = true
		p.frontier = None
		d.Backlog = o.Length
		return d
	}
	p.frontier = f
	top := o.Top
	if d.Stray != NotStray {
		// A stray top (an ID another program chose: a timestamp, say) is
		// no backlog of records: counted, one stall would pause every
		// partition under a global cap.
		top = min(top, p.appended)
	}
	d.Backlog = max(0, top+1-f)
	if p.committed == None && o.Top != None && p.covered != None && (p.floor == None || min(f, p.covered) < p.floor) {
		// A stream found without a commit: everything below its frontier
		// was acknowledged, so that is where the group stands — up to what
		// is known to be records: a frontier above a stray entry a group
		// read is not.
		p.floor = min(f, p.covered)
	}
	if d.Stray != NotStray {
		return d // a stalled partition commits nothing
	}
	c := None
	switch {
	case o.Top != None:
		// Never past what this ingest covered, whatever the stream says;
		// with everything in the stream acknowledged, up to it: past what
		// holds no record (Skipped).
		c = min(f, p.covered)
		if f == o.Top+1 && !d.Ahead {
			c = max(c, p.covered)
		}
	case p.committed == None && p.floor != None:
		// Nothing appended yet: commit the resolved start offset (or past
		// it, what holds no record), so that the group's position survives
		// a hand-over or a loss of Redis. Without a floor nothing is
		// committed: 0 would replace the configured start.
		c = max(p.floor, p.covered)
	case p.committed != None:
		c = p.covered // an empty stream: only what holds no record
	}
	if c != None && p.logEnd != None {
		c = min(c, p.logEnd)
	}
	if c != None && c > p.committed {
		d.Commit, d.ShouldCommit = c, true
	}
	return d
}

// String describes the partition's state, for logs.
func (p *Partition) String() string {
	return fmt.Sprintf("committed=%d appended=%d covered=%d log_end=%d frontier=%d floor=%d",
		p.committed, p.appended, p.covered, p.logEnd, p.frontier, p.floor)
}
