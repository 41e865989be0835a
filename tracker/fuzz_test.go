package tracker

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
)

// FuzzPartition drives a Partition through a model of one partition — a
// Kafka log with gaps, the ingest, a Redis stream with 1–3 worker groups,
// Redis faults, failing Kafka commits and hand-overs to a new owner (which,
// like partition.setup, starts from the commit and the stream top it reads) —
// with the operations and their order chosen by the fuzz input, and checks
// invariants 1–5 of the design after every step:
//
//   - a commit never passes the lowest Kafka record some group has not
//     acknowledged (ground truth: an ack is processed work and stays done;
//     an entry Redis lost before its ack is not done until it is appended
//     again and acknowledged);
//   - commits never go backwards, never pass the stream's top + 1, and are
//     never below the offset the ingest first fetched from;
//   - trimming removes only entries every group has acknowledged; no
//     pending entry ever points at a trimmed one;
//   - the stream never has a hole of records not yet processed;
//   - liveness: with the faults over, delivering and acknowledging
//     everything brings the commit to the end of the log.
//
// The observation is built the way the ingest's Lua script builds it: Top
// from the last-generated-id (which survives trims), NextUndelivered as the
// first entry after the group's last-delivered-id, LowestPending from the
// PEL, all from one atomic snapshot.
//
// Every seed of the corpus runs as a normal test under `go test`.
func FuzzPartition(f *testing.F) {
	for _, seed := range fuzzSeeds {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if runModel(in, false) != "" {
			// Run it again, tracing every operation for the report.
			t.Fatal(runModel(in, true))
		}
	})
}

// modelFailure is what the model panics with when a check fails.
type modelFailure string

// runModel runs the model on a fuzz input and returns what failed, or "".
// Only a verbose run keeps the trace of operations (it is the slow part).
func runModel(in []byte, verbose bool) (failure string) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(modelFailure)
			if !ok {
				panic(r)
			}
			failure = string(f)
		}
	}()
	m := newModel(in, verbose)
	m.run()
	m.finish()
	return ""
}

// modelLatestStart lets the fuzz configure the ingest to start at the log end
// ("newest") when neither a commit nor a stream says where to start. It
// caught Start() returning None after a loss of Redis before the first commit
// (the ingest then resolved "newest" again and skipped records).
const modelLatestStart = true

// fuzzSeeds start with a header — log start, "newest" start (odd),
// groups-1, number of records, then one byte per record (a multiple of 4
// leaves a gap before it) — followed by operations.
var fuzzSeeds = [][]byte{
	{},
	{0},
	// Three records, one group: append, deliver, ack out of order, commit.
	{0, 0, 0, 3, 1, 1, 1,
		opAppend, 7, opDeliver, 0, 3, opAck, 0, 2, opObserve, commitOK, opAck, 0, 0, opObserve, commitOK,
		opAck, 0, 0, opObserveTrim},
	// Gaps in the log, two groups at different speeds, trims after commits.
	{2, 0, 1, 8, 1, 4, 1, 1, 8, 1, 1, 1,
		opAppend, 3, opDeliver, 0, 3, opAck, 0, 1, opAck, 0, 0, opObserveTrim,
		opDeliver, 1, 1, opAck, 1, 0, opObserveTrim, opAppend, 7, opDeliver, 0, 3, opDeliver, 1, 3,
		opAck, 1, 0, opAck, 0, 2, opObserve, commitOK, opTrim, opAck, 0, 0, opAck, 1, 0, opObserveTrim},
	// A Kafka commit fails, then one succeeds and an older success is
	// reported late.
	{0, 0, 0, 4, 1, 1, 1, 1,
		opAppend, 3, opDeliver, 0, 2, opAck, 0, 0, opObserve, commitFail, opObserve, commitOK,
		opAck, 0, 0, opObserve, commitLate, opObserve, commitOK},
	// Redis saves a snapshot; the workers ack and the commit moves on;
	// Redis restarts from the snapshot: pending entries come back below
	// the commit and must not be trimmed.
	{0, 0, 0, 6, 1, 1, 1, 1, 1, 1,
		opAppend, 5, opDeliver, 0, 3, opAck, 0, 2, opSnapshot,
		opAck, 0, 0, opAck, 0, 0, opDeliver, 0, 1, opObserveTrim,
		opRollback, 0, opObserveTrim, opDeliver, 0, 3, opReclaim, 0, 0, opAck, 0, 0, opObserveTrim},
	// Redis restarts from a snapshot older than the last appends: the top
	// went back, the ingest rewinds.
	{0, 0, 1, 8, 1, 1, 1, 1, 1, 1, 1, 1,
		opAppend, 2, opSnapshot, opAppend, 3, opDeliver, 0, 3, opDeliver, 1, 3, opAck, 0, 0,
		opAck, 1, 0, opObserve, commitOK, opRollback, 0, opAppend, 3, opObserve, commitOK, opAppend, 7},
	// Redis loses everything after a commit: the ingest recreates the
	// groups and fetches again from the commit.
	{1, 0, 0, 5, 1, 1, 1, 1, 1,
		opAppend, 4, opDeliver, 0, 3, opAck, 0, 0, opAck, 0, 0, opObserve, commitOK,
		opDeliver, 0, 3, opLoss, opAppend, 3, opObserve, commitOK, opAppend, 3, opDeliver, 0, 3},
	// Redis loses everything before the first commit.
	{1, 0, 0, 4, 1, 1, 1, 1,
		opAppend, 3, opDeliver, 0, 1, opAck, 0, 0, opLoss, opObserve, commitOK, opAppend, 7},
	// A snapshot taken before a loss comes back once the stream was
	// rebuilt: its top is above what the new stream holds.
	{0, 0, 0, 8, 1, 1, 1, 1, 1, 1, 1, 1,
		opAppend, 7, opDeliver, 0, 3, opSnapshot, opAck, 0, 0, opObserve, commitOK, opLoss,
		opObserve, commitOK, opAppend, 1, opRollback, 0, opObserveTrim, opAppend, 7},
	// Issue 7 point 0: a new owner takes over a stream holding entries not
	// yet acknowledged (commit 1, top 7), then Redis restarts empty. It must
	// fetch again from the commit, not from the top it read at assignment.
	{0, 0, 0, 8, 1, 1, 1, 1, 1, 1, 1, 1,
		opAppend, 7, opDeliver, 0, 3, opAck, 0, 0, opObserve, commitOK, opOther, 0, commitOK,
		opLoss, opObserve, commitOK, opAppend, 7, opDeliver, 0, 3, opAck, 0, 0},
	// The same without any commit: the new owner's floor is the frontier
	// it observed at assignment.
	{0, 1, 0, 6, 1, 1, 1, 1, 1, 1,
		opAppend, 7, opDeliver, 0, 3, opAck, 0, 0, opOther, 0, commitFail,
		opLoss, opObserve, commitFail, opAppend, 7},
	// New Kafka records while the ingest runs; a rebalance hands the
	// partition over; an operator destroys a group.
	{0, 0, 1, 2, 1, 1,
		opAppend, 7, opProduce, 3, 1, 4, 1, 1, opAppend, 7, opDeliver, 0, 3, opAck, 0, 0, opObserve, commitOK,
		opOther, 0, opAppend, 7, opOther, 1, 1, opObserve, commitOK, opDeliver, 1, 3, opAck, 1, 0},
}

// An entry's place in the model: the offsets in the stream, in order.
type modelStream struct {
	exists  bool
	top     int64   // offset of last-generated-id, None when never appended
	entries []int64 // offsets still in the stream, ascending
	groups  map[string]*modelGroup
}

type modelGroup struct {
	lastDelivered int64 // offset of last-delivered-id, None for "0-0"
	pel           map[int64]bool
}

func (s *modelStream) clone() *modelStream {
	c := &modelStream{exists: s.exists, top: s.top, entries: slices.Clone(s.entries), groups: map[string]*modelGroup{}}
	for name, g := range s.groups {
		c.groups[name] = &modelGroup{lastDelivered: g.lastDelivered, pel: maps.Clone(g.pel)}
	}
	return c
}

func (s *modelStream) has(off int64) bool {
	_, ok := slices.BinarySearch(s.entries, off)
	return ok
}

// ensure is what the ingest does before its first append and after a loss:
// XGROUP CREATE <stream> <group> 0 MKSTREAM for every configured group that
// is missing.
func (s *modelStream) ensure(groups []string) {
	if !s.exists {
		*s = modelStream{exists: true, top: None, groups: map[string]*modelGroup{}}
	}
	for _, name := range groups {
		if s.groups[name] == nil {
			s.groups[name] = &modelGroup{lastDelivered: None, pel: map[int64]bool{}}
		}
	}
}

type model struct {
	in []byte
	// trace is the list of the last operations, printed when a check
	// fails; kept only when verbose.
	verbose bool
	trace   []string

	// Kafka.
	log      []int64 // offsets of the records, ascending (gaps allowed)
	logStart int64   // first offset of the partition
	logEnd   int64   // next offset the producer writes
	latest   bool    // the ingest's configured start: newest (true) or oldest
	floor    int64   // the lowest offset the ingest is responsible for, None before it resolved "newest"
	kafka    int64   // committed offset in Kafka, None when none
	next     int64   // the ingest's fetch position (the partition's p.next)

	groups []string
	acked  []map[int64]bool // per group: offsets ever acknowledged

	redis     *modelStream
	snapshots []*modelStream
	p         *Partition
	// faulted is true when Redis changed under the ingest since its last
	// observation (loss, rollback, group deleted).
	faulted bool
}

func newModel(in []byte, verbose bool) *model {
	if len(in) > maxInput {
		in = in[:maxInput]
	}
	m := &model{in: in, verbose: verbose, floor: None, kafka: None, next: None}
	m.logStart = int64(m.byte() % 4)
	m.logEnd = m.logStart
	m.latest = m.byte()%2 == 1 && modelLatestStart
	if !m.latest {
		m.floor = m.logStart
	}
	for range m.byte() % 3 {
		m.groups = append(m.groups, fmt.Sprintf("g%d", len(m.groups)))
	}
	m.groups = append(m.groups, fmt.Sprintf("g%d", len(m.groups)))
	for range m.groups {
		m.acked = append(m.acked, map[int64]bool{})
	}
	m.produce(int(m.byte() % 12))
	m.redis = &modelStream{groups: map[string]*modelGroup{}}
	m.logf("log %v (start %d, end %d), groups %v, latest=%v", m.log, m.logStart, m.logEnd, m.groups, m.latest)
	m.assign()
	return m
}

// byte returns the next fuzz byte, 0 when the input is used up.
func (m *model) byte() byte {
	if len(m.in) == 0 {
		return 0
	}
	b := m.in[0]
	m.in = m.in[1:]
	return b
}

func (m *model) logf(format string, args ...any) {
	if !m.verbose {
		return
	}
	if len(m.trace) >= 2*traceLen {
		m.trace = append(m.trace[:0], m.trace[len(m.trace)-traceLen:]...)
	}
	m.trace = append(m.trace, fmt.Sprintf(format, args...))
}

func (m *model) fatalf(format string, args ...any) {
	tail := m.trace
	if len(tail) > traceLen {
		tail = append([]string{"..."}, tail[len(tail)-traceLen:]...)
	}
	panic(modelFailure(fmt.Sprintf("%s\nstate: kafka=%d floor=%d partition{%v} redis=%v\ntrace:\n  %s",
		fmt.Sprintf(format, args...), m.kafka, m.floor, m.p, m.view(), strings.Join(tail, "\n  "))))
}

// view shows Redis as it is when formatted (logf formats at once).
func (m *model) view() fmt.Stringer { return redisView{m} }

type redisView struct{ m *model }

func (v redisView) String() string {
	m := v.m
	s := m.redis
	if !s.exists {
		return "{gone}"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "{top=%d entries=%v", s.top, s.entries)
	for _, name := range m.groups {
		if g := s.groups[name]; g != nil {
			fmt.Fprintf(&b, " %s{ld=%d pel=%v}", name, g.lastDelivered, slices.Sorted(maps.Keys(g.pel)))
		} else {
			fmt.Fprintf(&b, " %s{missing}", name)
		}
	}
	return b.String() + "}"
}

// Bounds of the model, so that one run stays well under a millisecond.
const (
	maxInput   = 256 // bytes of fuzz input used (longer inputs minimize slowly)
	maxSteps   = 150
	maxRecords = 40
	traceLen   = 60 // operations printed when a check fails
)

// produce writes n records to Kafka; some offsets are skipped (compaction,
// transaction markers), as a consumer sees them.
func (m *model) produce(n int) {
	for range min(n, maxRecords-len(m.log)) {
		if b := m.byte(); b%4 == 0 {
			m.logEnd += int64(b%3) + 1 // a gap
		}
		m.log = append(m.log, m.logEnd)
		m.logEnd++
	}
}

// The operations, chosen by a fuzz byte modulo 32 (more bytes give their
// arguments): opAppend..opAppend+5 all append, and so on, so that the work
// of the ingest and the workers is more frequent than faults.
const (
	opAppend      = 0  // count: one batch of 1–8 records
	opDeliver     = 6  // group, count: XREADGROUP > of 1–4 entries
	opAck         = 12 // group, pick: XACK of any pending entry
	opReclaim     = 18 // group, pick: XAUTOCLAIM of a pending entry
	opObserve     = 20 // outcome: observe, commit (see commitOK)
	opObserveTrim = 23 // observe, commit, XTRIM MINID at the trim point
	opTrim        = 25 // XTRIM at the trim point of the last observation
	opProduce     = 26 // count, gaps: 1–4 new Kafka records
	opSnapshot    = 28 // Redis saves an RDB snapshot (the last 4 are kept)
	opLoss        = 29 // Redis restarts empty: stream and groups gone
	opRollback    = 30 // which: Redis restarts from a saved snapshot
	opOther       = 31 // even: rebalance to a new ingest; odd, group: XGROUP DESTROY
)

func (m *model) run() {
	for step := 0; len(m.in) > 0 && step < maxSteps; step++ {
		switch op := m.byte() % 32; {
		case op < opDeliver:
			m.append(1 + int(m.byte()%8))
		case op < opAck:
			m.deliver(int(m.byte())%len(m.groups), 1+int(m.byte()%4))
		case op < opReclaim:
			m.ack(int(m.byte())%len(m.groups), int(m.byte()))
		case op < opObserve:
			m.reclaim(int(m.byte())%len(m.groups), int(m.byte()))
		case op < opObserveTrim:
			m.observe(m.byte())
		case op < opTrim:
			if m.observe(commitOK) {
				m.trim()
			}
		case op < opProduce:
			// Trim with the trim point of the last observation, as an
			// ingest does right after it: only progress happened since.
			if !m.faulted {
				m.trim()
			}
		case op < opSnapshot:
			b := m.byte()
			n := 1 + int(b%4)
			m.produce(n)
			if b&0x80 != 0 {
				m.logEnd++ // a transaction marker after them: the tail holds no record
			}
			m.logf("produce %d: log end %d", n, m.logEnd)
		case op < opLoss:
			if len(m.snapshots) == 4 {
				m.snapshots = m.snapshots[1:]
			}
			m.snapshots = append(m.snapshots, m.redis.clone())
			m.logf("snapshot %d: %v", len(m.snapshots)-1, m.view())
		case op < opRollback:
			m.redis = &modelStream{groups: map[string]*modelGroup{}}
			m.faulted = true
			m.logf("redis loses everything")
		case op < opOther:
			if len(m.snapshots) > 0 {
				i := int(m.byte()) % len(m.snapshots)
				m.redis = m.snapshots[i].clone()
				m.faulted = true
				m.logf("redis rolls back to snapshot %d: %v", i, m.view())
			}
		default:
			if m.byte()%2 == 0 {
				m.rebalance()
			} else if g := m.groups[int(m.byte())%len(m.groups)]; m.redis.exists && m.redis.groups[g] != nil {
				delete(m.redis.groups, g)
				m.faulted = true
				m.logf("operator destroys group %s", g)
			}
		}
		m.checkRedis()
	}
}

// resolve is the ingest's configured start offset (ListOffsets of the log
// start or end), called through Partition.Position only when neither a
// commit, a stream top nor a floor says where to start.
func (m *model) resolve() (int64, error) {
	off := m.logStart
	if m.latest {
		off = m.logEnd
	}
	if m.floor == None || off < m.floor {
		m.floor = off
	}
	m.logf("resolve the configured start: %d", off)
	return off, nil
}

// restart is the ingest's partition.restart: the fetch position from
// Position, at assignment and after a loss.
func (m *model) restart() {
	next, err := m.p.Position(m.resolve)
	if err != nil || next == None {
		m.fatalf("Position() = %d, %v: want an offset", next, err)
	}
	if m.floor != None && next > m.floor {
		// Everything from the floor up to the position must be done: in
		// the stream, or acknowledged.
		for _, off := range m.log {
			if off >= next {
				break
			}
			if off >= m.floor && !m.allAcked(off) && !m.redis.has(off) {
				m.fatalf("Position() = %d skips record %d, neither acknowledged nor in the stream", next, off)
			}
		}
	}
	m.next = next
	m.logf("restart: fetch from %d; %v", next, m.p)
}

// assign is partition.setup of a new owner (at start, and at a hand-over):
// it creates the groups at 0 (MKSTREAM), reads the commit and the stream's
// top, chooses its position and observes once (offering the frontier, or the
// resolved start, for commit at once).
func (m *model) assign() {
	m.redis.ensure(m.groups)
	m.p = NewPartition(m.kafka, m.redis.top)
	m.restart()
	m.faulted = false
	m.observe(m.byte())
}

// append is one run of the ingest's append script: it appends a contiguous
// batch fetched from Start() only if the stream's top is what the ingest
// appended last; entries at or below a top that is ahead are dropped.
func (m *model) append(k int) {
	s := m.redis
	if !s.exists || s.top < m.p.Appended() {
		m.logf("append refused: stream %v behind appended=%d", m.view(), m.p.Appended())
		return
	}
	start := m.next
	m.p.SetLogEnd(m.logEnd) // the fetch's high watermark
	i, _ := slices.BinarySearch(m.log, start)
	batch := m.log[i:min(i+k, len(m.log))]
	if len(batch) == 0 {
		// A fetch below the log end that returns nothing: the offset holds
		// no record (a transaction marker, compacted away).
		if start < m.logEnd {
			m.p.Skipped(start, start+1)
			m.next = start + 1
			m.logf("fetch at %d: nothing; skipped; %v", start, m.p)
		}
		return
	}
	if batch[0] > start {
		// The fetch's first record is past the position: nothing between.
		m.p.Skipped(start, batch[0])
	}
	var added []int64
	for _, off := range batch {
		if off <= s.top {
			continue // already there: XADD would be refused
		}
		// Invariant 1: a record skipped between the top and this one must
		// be processed by every group already.
		j, _ := slices.BinarySearch(m.log, s.top+1)
		for _, o := range m.log[j:] {
			if o >= off {
				break
			}
			if o >= m.floor && !m.allAcked(o) {
				m.fatalf("append of %d after top %d leaves a hole at unprocessed record %d", off, s.top, o)
			}
		}
		s.entries = append(s.entries, off)
		s.top = off
		added = append(added, off)
	}
	m.p.MarkAppended(batch[len(batch)-1])
	m.next = batch[len(batch)-1] + 1
	m.logf("append from %d: %v; %v", start, added, m.p)
}

// deliver is XREADGROUP GROUP g > COUNT k.
func (m *model) deliver(gi, k int) {
	g := m.redis.groups[m.groups[gi]]
	if !m.redis.exists || g == nil {
		return
	}
	i, _ := slices.BinarySearch(m.redis.entries, g.lastDelivered+1)
	batch := m.redis.entries[i:min(i+k, len(m.redis.entries))]
	for _, off := range batch {
		g.pel[off] = true
		g.lastDelivered = off
	}
	if len(batch) > 0 {
		m.logf("deliver %s: %v", m.groups[gi], batch)
	}
}

// ack is XACK of one pending entry, any of them: the work is done.
func (m *model) ack(gi, pick int) {
	g := m.redis.groups[m.groups[gi]]
	if !m.redis.exists || g == nil || len(g.pel) == 0 {
		return
	}
	pel := slices.Sorted(maps.Keys(g.pel))
	off := pel[pick%len(pel)]
	if !m.redis.has(off) {
		m.fatalf("ack %s %d: the pending entry is no longer in the stream", m.groups[gi], off)
	}
	delete(g.pel, off)
	m.acked[gi][off] = true
	m.logf("ack %s %d", m.groups[gi], off)
}

// reclaim is XAUTOCLAIM of a pending entry by another consumer: it stays
// pending, and must still be readable.
func (m *model) reclaim(gi, pick int) {
	g := m.redis.groups[m.groups[gi]]
	if !m.redis.exists || g == nil || len(g.pel) == 0 {
		return
	}
	pel := slices.Sorted(maps.Keys(g.pel))
	off := pel[pick%len(pel)]
	if !m.redis.has(off) {
		m.fatalf("reclaim %s %d: the pending entry was trimmed", m.groups[gi], off)
	}
	m.logf("reclaim %s %d", m.groups[gi], off)
}

// observation builds what the ingest's Lua script returns.
func (m *model) observation() Observation {
	s := m.redis
	if !s.exists {
		return Observation{Exists: false, Top: None}
	}
	o := Observation{Exists: true, Top: s.top, Length: int64(len(s.entries))}
	for _, name := range m.groups {
		g := s.groups[name]
		if g == nil {
			o.Groups = append(o.Groups, Group{Name: name, Missing: true, LowestPending: None, NextUndelivered: None})
			continue
		}
		og := Group{Name: name, Pending: int64(len(g.pel)), LowestPending: None, NextUndelivered: None}
		if len(g.pel) > 0 {
			og.LowestPending = slices.Min(slices.Collect(maps.Keys(g.pel)))
		}
		if i, _ := slices.BinarySearch(s.entries, g.lastDelivered+1); i < len(s.entries) {
			og.NextUndelivered = s.entries[i]
		}
		o.Groups = append(o.Groups, og)
	}
	return o
}

// Kafka commit outcomes for observe.
const (
	commitOK   = 2 // the commit succeeds
	commitFail = 0 // the commit fails: the Partition is not told
	commitLate = 1 // it succeeds, then an older commit's success is reported late
)

// observe runs one observation through the Partition and does what the
// ingest does with the decision; kafka%8 picks the outcome of the Kafka
// commit (see commitOK). It reports whether the stream was found healthy.
func (m *model) observe(kafka byte) bool {
	o := m.observation()
	before := m.p.Committed()
	d := m.p.Observe(o)
	m.faulted = false
	m.logf("observe %+v -> %+v", o, d)
	if d.Backlog < 0 {
		m.fatalf("negative backlog %d", d.Backlog)
	}
	if m.p.Committed() != before {
		m.fatalf("Observe changed Committed() from %d to %d", before, m.p.Committed())
	}
	if d.Lost {
		if d.ShouldCommit || !d.RecreateGroups {
			m.fatalf("lost: want no commit and RecreateGroups, got %+v", d)
		}
		top := o.Top
		if !o.Exists {
			top = None
		}
		// Invariant 5: max(committed, top+1), the top read after the loss;
		// without a commit the floor may raise it (checked by restart: it
		// skips nothing unacknowledged), nothing else.
		if c := m.p.Committed(); c != None && d.Rewind != max(c, top+1) {
			m.fatalf("lost: want Rewind max(committed %d, top %d + 1) = %d, got %d", c, top, max(c, top+1), d.Rewind)
		}
		// Recreate every group at 0, on the stream as it is now.
		if m.redis.exists {
			m.redis.groups = map[string]*modelGroup{}
		}
		m.redis.ensure(m.groups)
		m.p.Reset(m.redis.top)
		m.restart()
		if d.Rewind != None && m.next != d.Rewind {
			m.fatalf("after Reset(%d): want Position() = Rewind %d, got %d", m.redis.top, d.Rewind, m.next)
		}
		m.logf("recovered: groups recreated at 0; %v", m.p)
		return false
	}
	if d.RecreateGroups {
		m.redis.ensure(m.groups)
		m.logf("groups recreated at 0")
	}
	if !d.ShouldCommit {
		return !d.RecreateGroups
	}
	if d.Commit <= m.p.Committed() || d.Commit <= m.kafka {
		m.fatalf("commit %d goes backwards: committed %d, Kafka has %d", d.Commit, m.p.Committed(), m.kafka)
	}
	// Invariant 3: never past the log end (the ground-truth check below
	// covers "never past a record not acknowledged": past what was
	// appended, only offsets that hold no record).
	if d.Commit > m.logEnd {
		m.fatalf("commit %d passes the log end %d", d.Commit, m.logEnd)
	}
	if m.floor != None && d.Commit < m.floor {
		m.fatalf("commit %d is below the first offset fetched %d", d.Commit, m.floor)
	}
	for _, off := range m.log {
		if off >= d.Commit {
			break
		}
		if off < m.floor {
			continue
		}
		for gi := range m.groups {
			if !m.acked[gi][off] {
				m.fatalf("commit %d passes record %d, not acknowledged by group %s", d.Commit, off, m.groups[gi])
			}
		}
	}
	switch kafka % 8 {
	case commitFail:
		m.logf("commit %d fails", d.Commit)
	case commitLate:
		prev := m.kafka
		m.kafka = d.Commit
		m.p.MarkCommitted(d.Commit)
		if prev != None {
			m.p.MarkCommitted(prev)
		}
		m.logf("commit %d, then the success of %d reported late", d.Commit, prev)
		if m.p.Committed() != d.Commit {
			m.fatalf("Committed() = %d after a late report of %d: want %d", m.p.Committed(), prev, d.Commit)
		}
	default:
		m.kafka = d.Commit
		m.p.MarkCommitted(d.Commit)
		m.logf("commit %d", d.Commit)
	}
	return !d.RecreateGroups
}

// trim is XTRIM MINID <TrimPoint>-0.
func (m *model) trim() {
	tp := m.p.TrimPoint()
	if tp == None || !m.redis.exists {
		return
	}
	s := m.redis
	i, _ := slices.BinarySearch(s.entries, tp)
	removed := s.entries[:i]
	for _, off := range removed {
		for gi, name := range m.groups {
			g := s.groups[name]
			if g != nil && g.pel[off] {
				m.fatalf("trim below %d removes %d, pending in group %s", tp, off, name)
			}
			if g != nil && off > g.lastDelivered {
				m.fatalf("trim below %d removes %d, not yet delivered to group %s", tp, off, name)
			}
			if !m.acked[gi][off] {
				m.fatalf("trim below %d removes %d, never acknowledged by group %s", tp, off, name)
			}
		}
	}
	s.entries = slices.Clone(s.entries[i:])
	if len(removed) > 0 {
		m.logf("trim below %d: %v", tp, removed)
	}
}

// rebalance hands the partition to a new ingest: it reads the commit from
// Kafka and the stream's top as they are now (assign). When neither says
// anything (no commit, nothing in the stream), the new owner resolves its
// configured start afresh, as any Kafka consumer would: the records produced
// since the old owner resolved "newest" are not its to deliver. (The old
// owner committed its start at once to make that window small; only a
// commit that failed, then a loss of Redis, leave it open.)
func (m *model) rebalance() {
	if m.latest && m.kafka == None && (!m.redis.exists || m.redis.top == None) {
		// Nothing says where the group stands: the responsibility starts
		// anew. A Redis snapshot of the old owner's time restored later
		// would bring back entries from before it; the model keeps none.
		m.floor = None
		m.snapshots = nil
	}
	m.logf("rebalance to a new owner")
	m.assign()
	m.faulted = true // the old owner's last trim point is not the new one's
}

// checkRedis asserts what must hold of Redis after every step: every
// pending entry is still in the stream.
func (m *model) checkRedis() {
	if !m.redis.exists {
		return
	}
	for name, g := range m.redis.groups {
		for off := range g.pel {
			if !m.redis.has(off) {
				m.fatalf("group %s has %d pending, but it is no longer in the stream", name, off)
			}
		}
	}
}

func (m *model) allAcked(off int64) bool {
	for gi := range m.groups {
		if !m.acked[gi][off] {
			return false
		}
	}
	return true
}

// finish checks liveness: no more faults, the workers keep up, and the
// commit reaches the log end — past transaction markers at the tail too.
func (m *model) finish() {
	m.in = nil
	m.logf("--- faults over")
	for round := 0; round < 20; round++ {
		if m.observe(commitOK) {
			m.trim()
		}
		if m.kafka == m.logEnd {
			return
		}
		for range 100 {
			next, top := m.next, m.redis.top
			m.append(64)
			if m.next == next && m.redis.top == top {
				break
			}
		}
		for gi, name := range m.groups {
			m.deliver(gi, len(m.log)+1)
			for m.redis.exists && m.redis.groups[name] != nil && len(m.redis.groups[name].pel) > 0 {
				m.ack(gi, 0)
			}
		}
	}
	m.fatalf("liveness: commit %d never reached the log end %d (log %v)", m.kafka, m.logEnd, m.log)
}
