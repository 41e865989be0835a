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
	// Groups holds one entry per configured worker group.
	Groups []Group
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
	// ID 0 and fetch again from Rewind.
	Lost bool
	// RecreateGroups is true when the stream or a configured group is missing.
	RecreateGroups bool
	// Rewind is the offset to fetch from after a loss: max(committed, top+1,
	// the offset first started from). None when none of them is known: the
	// caller then resolves its configured start offset, as at first.
	Rewind int64
	// Backlog is the number of offsets appended but not acknowledged by every
	// group (top+1 - frontier); with Kafka gaps (compaction, transaction
	// markers) it counts high, so backpressure errs on the safe side.
	Backlog int64
}

// Partition tracks one partition's commit point. It is not safe for
// concurrent use; the ingest keeps one per assigned partition.
type Partition struct {
	committed int64 // last offset committed to Kafka, None if none
	appended  int64 // highest offset known to be in the stream, None if none
	frontier  int64 // last known frontier, None if unknown
	origin    int64 // where fetching began when nothing said where (Started), None otherwise
}

// NewPartition starts tracking from the offset committed in Kafka (None when
// the group has none) and the stream's top as read at assignment.
func NewPartition(committed, top int64) *Partition {
	return &Partition{committed: committed, appended: top, frontier: None, origin: None}
}

// Committed returns the last committed offset, or None.
func (p *Partition) Committed() int64 { return p.committed }

// Appended returns the highest offset known to be in the stream, or None.
func (p *Partition) Appended() int64 { return p.appended }

// Start returns the offset to fetch from: max(committed, appended+1). It is
// None when neither is known (a new group on a new stream): the caller then
// starts from its configured start offset.
func (p *Partition) Start() int64 { return startAt(p.committed, p.appended, p.origin) }

func startAt(committed, appended, origin int64) int64 {
	if committed == None && appended == None {
		return origin
	}
	return max(committed, appended+1, origin)
}

// Started records the offset the caller began fetching from (Start, or its
// configured start offset when Start returned None). After a loss of Redis before the first commit, Start returns it
// again instead of None: resolving "latest" anew would skip every record
// appended, or produced, since.
func (p *Partition) Started(off int64) {
	if p.origin == None || off < p.origin {
		p.origin = off
	}
}

// MarkAppended records that the stream's top is now top (after a successful
// append, or an append that found the stream already ahead).
func (p *Partition) MarkAppended(top int64) {
	p.appended = max(p.appended, top)
}

// Reset is called after Lost: the stream was recreated with top top.
// Appended restarts from there, so that the next Start is the rewind point.
func (p *Partition) Reset(top int64) {
	p.appended = top
	p.frontier = None
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
		d.Rewind = startAt(p.committed, o.Top, p.origin)
		p.frontier = None
		return d
	}
	p.appended = o.Top
	f, ok := o.Frontier()
	if !ok {
		d.RecreateGroups = true
		p.frontier = None
		d.Backlog = o.Length
		return d
	}
	p.frontier = f
	d.Backlog = max(0, o.Top+1-f)
	// Nothing ever appended: no commit, or 0 would replace the start offset.
	if f > p.committed && o.Top != None {
		d.Commit, d.ShouldCommit = f, true
	}
	return d
}

// String describes the partition's state, for logs.
func (p *Partition) String() string {
	return fmt.Sprintf("committed=%d appended=%d frontier=%d", p.committed, p.appended, p.frontier)
}
