package tracker

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
)

// FuzzPartition drives a Partition through a model of one partition — a
// Kafka log with gaps, the ingest, a Redis stream with 1–3 configured worker
// groups and up to 2 groups no flag names (another ingest's
// --worker-groups, an operator's XGROUP CREATE at 0 or at $), Redis faults,
// failing Kafka commits, hand-overs to a new owner (which, like
// partition.setup, starts from the commit and the stream top it reads), a
// zombie of an old owner appending above the top (Ahead), and other programs
// writing into the stream: an XADD above the top (below or above the log
// end), XDEL of such an entry, XSETID back, forward or to the status top,
// XGROUP SETID back (a replay), and the runbook of docs/operations.md ("A
// stalled partition") — with the operations and their order chosen by the
// fuzz input, and checks invariants 1–5 of the design after every step:
//
//   - a commit never passes the lowest Kafka record some group has not
//     acknowledged (ground truth: an ack is processed work and stays done;
//     an entry Redis lost before its ack is not done until it is appended
//     again and acknowledged) — every configured group, and every other
//     group on the stream for the records it was given (in the stream when
//     it was created at 0, or appended since);
//   - an entry another program wrote is never taken for a record: acking it
//     processes no record, and a partition whose top cannot be a record
//     commits nothing and appends nothing until the runbook removed it;
//   - commits never go backwards, never pass the Kafka log end, and are
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

// An entry's place in the model: the offsets in the stream, in order. An
// entry another program wrote takes the place of the offset its ID covers
// (ID 150-1 or 151-0: offset 150).
type modelStream struct {
	exists  bool
	top     int64   // offset of last-generated-id, None when never appended
	entries []int64 // offsets still in the stream, ascending
	foreign map[int64]bool
	groups  map[string]*modelGroup
}

type modelGroup struct {
	lastDelivered int64 // offset of last-delivered-id, None for "0-0"
	pel           map[int64]bool
	// owed, for a group no flag names (nil for a configured one): the
	// records it was given — in the stream when it was created at 0, or
	// appended since. Those, and only those, it holds the commit for.
	owed map[int64]bool
}

func newModelStream() *modelStream {
	return &modelStream{groups: map[string]*modelGroup{}, foreign: map[int64]bool{}}
}

func (s *modelStream) clone() *modelStream {
	c := &modelStream{exists: s.exists, top: s.top, entries: slices.Clone(s.entries), foreign: maps.Clone(s.foreign), groups: map[string]*modelGroup{}}
	for name, g := range s.groups {
		c.groups[name] = &modelGroup{lastDelivered: g.lastDelivered, pel: maps.Clone(g.pel), owed: maps.Clone(g.owed)}
	}
	return c
}

// has reports whether an entry, a record or not, is in the stream at off.
func (s *modelStream) has(off int64) bool {
	_, ok := slices.BinarySearch(s.entries, off)
	return ok
}

// hasRecord reports whether record off is in the stream.
func (s *modelStream) hasRecord(off int64) bool { return s.has(off) && !s.foreign[off] }

// xadd adds an entry above the top: a record (kbridge's append script) or
// not (another program's XADD); a group no flag names is owed the records.
func (s *modelStream) xadd(off int64, foreign bool) {
	s.entries = append(s.entries, off)
	s.top = off
	delete(s.foreign, off)
	if foreign {
		s.foreign[off] = true
		return
	}
	for _, g := range s.groups {
		if g.owed != nil {
			g.owed[off] = true
		}
	}
}

// maxEntry is the offset of the last entry in the stream, None when empty.
func (s *modelStream) maxEntry() int64 {
	if len(s.entries) == 0 {
		return None
	}
	return s.entries[len(s.entries)-1]
}

// topEntry is what the observe script's ours() says of the top.
func (s *modelStream) topEntry() TopEntry {
	switch {
	case s.top == None:
		return TopRecord
	case !s.has(s.top):
		return TopGone
	case s.foreign[s.top]:
		return TopForeign
	}
	return TopRecord
}

// ensure is what the ingest does before its first append, after a loss and
// before a stall on a stray entry lifts (bridge stream.ensure): XGROUP CREATE
// <stream> <group> 0 MKSTREAM for every configured group that is missing,
// then XGROUP SETID to the top of every group, configured or not, whose
// last-delivered-id is above the top (rewindGroupsScript).
func (s *modelStream) ensure(groups []string) {
	if !s.exists {
		*s = modelStream{exists: true, top: None, groups: map[string]*modelGroup{}, foreign: map[int64]bool{}}
	}
	for _, name := range groups {
		if s.groups[name] == nil {
			s.groups[name] = &modelGroup{lastDelivered: None, pel: map[int64]bool{}}
		}
	}
	for _, g := range s.groups {
		if g.lastDelivered > s.top {
			g.lastDelivered = s.top
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

	groups []string                  // configured (--worker-groups)
	acked  map[string]map[int64]bool // per group name: records ever acknowledged

	redis     *modelStream
	snapshots []*modelStream
	p         *Partition
	// faulted is true when Redis changed under the ingest since its last
	// observation (loss, rollback, a group deleted, created or set back).
	faulted bool
	// stalled is the ingest's stall on a stream top that cannot be a record
	// (partition.stallStray): no fetch, no append, no commit, no trim.
	stalled bool
}

// foreignGroups are the names of the groups no flag of the ingest names.
var foreignGroups = []string{"x0", "x1"}

// pickGroup chooses a group from a fuzz byte: a configured one below 128 (so
// that the seeds written before there were other groups keep their
// meaning), else one no flag names.
func (m *model) pickGroup(b byte) string {
	if b >= 128 {
		return foreignGroups[int(b)%len(foreignGroups)]
	}
	return m.groups[int(b)%len(m.groups)]
}

// allNames is every group name the model knows, configured first.
func (m *model) allNames() []string { return append(slices.Clone(m.groups), foreignGroups...) }

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
	m.acked = map[string]map[int64]bool{}
	for _, name := range m.allNames() {
		m.acked[name] = map[int64]bool{}
	}
	m.produce(int(m.byte() % 12))
	m.redis = newModelStream()
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
	if len(s.foreign) > 0 {
		fmt.Fprintf(&b, " not-records=%v", slices.Sorted(maps.Keys(s.foreign)))
	}
	for _, name := range m.allNames() {
		if g := s.groups[name]; g != nil {
			fmt.Fprintf(&b, " %s{ld=%d pel=%v", name, g.lastDelivered, slices.Sorted(maps.Keys(g.pel)))
			if g.owed != nil {
				fmt.Fprintf(&b, " owed=%v", slices.Sorted(maps.Keys(g.owed)))
			}
			b.WriteString("}")
		} else if slices.Contains(m.groups, name) {
			fmt.Fprintf(&b, " %s{missing}", name)
		}
	}
	if m.stalled {
		b.WriteString(" STALLED")
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

// The operations, chosen by a fuzz byte modulo 40 (more bytes give their
// arguments): opAppend..opAppend+5 all append, and so on, so that the work
// of the ingest and the workers is more frequent than faults. A group
// argument below 128 picks a configured group, else one no flag names
// (pickGroup).
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
	opStray       = 32 // distance: another program XADDs an entry 1–256 above the top (also 39)
	opZombie      = 33 // count: an old owner appends the next 1–4 records above the top
	opGroup       = 34 // which: another ingest or an operator creates a group at 0 or at $
	opXDel        = 35 // pick: an operator deletes an entry another program wrote
	opXSetID      = 36 // how: an operator sets the stream's top back, forward, to the status top
	opSetID       = 37 // group, by: an operator sets a group's last-delivered-id back (a replay)
	opRunbook     = 38 // the runbook of a stalled partition: XDEL the stray entries, XSETID the status top
	opOps         = 40
)

func (m *model) run() {
	for step := 0; len(m.in) > 0 && step < maxSteps; step++ {
		switch op := m.byte() % opOps; {
		case op < opDeliver:
			m.append(1 + int(m.byte()%8))
		case op < opAck:
			m.deliver(m.pickGroup(m.byte()), 1+int(m.byte()%4))
		case op < opReclaim:
			m.ack(m.pickGroup(m.byte()), int(m.byte()))
		case op < opObserve:
			m.reclaim(m.pickGroup(m.byte()), int(m.byte()))
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
			if m.groupAboveTop() {
				// A snapshot of the moment between an operator's XSETID
				// and the ingest setting the groups back, restored after
				// the ingest resumed, brings a group above the top back
				// with nothing to say so: the records appended next are
				// never delivered to it. Known, not handled (see the
				// report of branch stray); not modelled.
				break
			}
			if len(m.snapshots) == 4 {
				m.snapshots = m.snapshots[1:]
			}
			m.snapshots = append(m.snapshots, m.redis.clone())
			m.logf("snapshot %d: %v", len(m.snapshots)-1, m.view())
		case op < opRollback:
			m.redis = newModelStream()
			m.faulted = true
			m.logf("redis loses everything")
		case op < opOther:
			if len(m.snapshots) > 0 {
				i := int(m.byte()) % len(m.snapshots)
				m.redis = m.snapshots[i].clone()
				m.faulted = true
				m.logf("redis rolls back to snapshot %d: %v", i, m.view())
			}
		case op < opStray:
			if m.byte()%2 == 0 {
				m.rebalance()
			} else if g := m.pickGroup(m.byte()); m.redis.exists && m.redis.groups[g] != nil {
				delete(m.redis.groups, g)
				m.faulted = true
				m.logf("operator destroys group %s", g)
			}
		case op == opStray || op == opOps-1:
			m.stray(1 + int64(m.byte()))
		case op == opZombie:
			m.zombie(1 + int(m.byte()%4))
		case op == opGroup:
			m.createGroup(m.byte())
		case op == opXDel:
			m.xdel(int(m.byte()))
		case op == opXSetID:
			m.xsetid(m.byte())
		case op == opSetID:
			m.setid(m.pickGroup(m.byte()), 1+int64(m.byte()%8))
		case op == opRunbook:
			m.runbook()
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
			if off >= m.floor && !m.allAcked(off) && !m.redis.hasRecord(off) {
				m.fatalf("Position() = %d skips record %d, neither acknowledged nor in the stream", next, off)
			}
		}
	}
	m.next = next
	m.logf("restart: fetch from %d; %v", next, m.p)
}

// assign is partition.setup of a new owner (at start, and at a hand-over):
// it creates the groups at 0 (MKSTREAM), reads the commit, the stream's top
// and the log end, stalls on a top that cannot be a record (Found), chooses
// its position and observes once (offering the frontier, or the resolved
// start, for commit at once).
func (m *model) assign() {
	m.redis.ensure(m.groups)
	m.p = NewPartition(m.kafka, m.redis.top)
	m.p.SetLogEnd(m.logEnd)
	st := m.p.Found(m.observation())
	m.stalled = st != NotStray
	m.restart()
	m.faulted = false
	o := m.observation()
	d := m.p.Observe(o)
	m.logf("assign: found %v; observe %+v -> %+v", st, o, d)
	if d.Lost {
		m.fatalf("at assignment, Observe of the stream just read says lost: %+v", d)
	}
	m.checkDecision(o, d)
	if d.ShouldCommit && !m.stalled {
		m.commit(d, m.byte())
	}
}

// append is one run of the ingest's append script: it appends a contiguous
// batch fetched from Start() only if the stream's top is what the ingest
// appended last; entries at or below a top that is ahead are dropped, if
// that top is a record below the log end. Refused, the ingest observes at
// once. A stalled partition does not fetch.
func (m *model) append(k int) {
	if m.stalled {
		return
	}
	s := m.redis
	m.p.SetLogEnd(m.logEnd) // the fetch's high watermark
	if !s.exists || s.top < m.p.Appended() {
		m.logf("append refused: stream %v behind appended=%d", m.view(), m.p.Appended())
		m.observe(commitOK)
		return
	}
	if s.top > m.p.Appended() && (s.top >= m.logEnd || s.topEntry() != TopRecord) {
		m.logf("append refused: top %d above appended=%d is no record (%v, log end %d)", s.top, m.p.Appended(), s.topEntry(), m.logEnd)
		m.observe(commitOK)
		return
	}
	start := m.next
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
		s.xadd(off, false)
		added = append(added, off)
	}
	m.p.MarkAppended(batch[len(batch)-1])
	m.next = batch[len(batch)-1] + 1
	m.logf("append from %d: %v; %v", start, added, m.p)
}

// deliver is XREADGROUP GROUP g > COUNT k.
func (m *model) deliver(name string, k int) {
	g := m.redis.groups[name]
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
		m.logf("deliver %s: %v", name, batch)
	}
}

// ack is XACK of one pending entry, any of them: the work is done. An entry
// another program wrote is no record: acking it processes none.
func (m *model) ack(name string, pick int) {
	g := m.redis.groups[name]
	if !m.redis.exists || g == nil || len(g.pel) == 0 {
		return
	}
	pel := slices.Sorted(maps.Keys(g.pel))
	off := pel[pick%len(pel)]
	if !m.redis.has(off) {
		m.fatalf("ack %s %d: the pending entry is no longer in the stream", name, off)
	}
	delete(g.pel, off)
	if !m.redis.foreign[off] {
		m.acked[name][off] = true
	}
	m.logf("ack %s %d", name, off)
}

// reclaim is XAUTOCLAIM of a pending entry by another consumer: it stays
// pending, and must still be readable.
func (m *model) reclaim(name string, pick int) {
	g := m.redis.groups[name]
	if !m.redis.exists || g == nil || len(g.pel) == 0 {
		return
	}
	pel := slices.Sorted(maps.Keys(g.pel))
	off := pel[pick%len(pel)]
	if !m.redis.has(off) {
		m.fatalf("reclaim %s %d: the pending entry was trimmed", name, off)
	}
	m.logf("reclaim %s %d", name, off)
}

// observation builds what the ingest's Lua script returns.
func (m *model) observation() Observation {
	s := m.redis
	if !s.exists {
		return Observation{Exists: false, Top: None}
	}
	o := Observation{Exists: true, Top: s.top, Length: int64(len(s.entries)), TopEntry: s.topEntry(), RecordBelow: None}
	if o.TopEntry != TopRecord {
		// recordbelow: the highest record among the 10 entries below the top.
		n, _ := slices.BinarySearch(s.entries, s.top)
		below := s.entries[:n]
		for i := len(below) - 1; i >= max(0, len(below)-10); i-- {
			if !s.foreign[below[i]] {
				o.RecordBelow = below[i]
				break
			}
		}
	}
	// Every group on the stream (XINFO GROUPS), then the configured ones
	// missing.
	for _, name := range slices.Sorted(maps.Keys(s.groups)) {
		g := s.groups[name]
		og := Group{Name: name, Pending: int64(len(g.pel)), LowestPending: None, NextUndelivered: None}
		if len(g.pel) > 0 {
			og.LowestPending = slices.Min(slices.Collect(maps.Keys(g.pel)))
		}
		if i, _ := slices.BinarySearch(s.entries, g.lastDelivered+1); i < len(s.entries) {
			og.NextUndelivered = s.entries[i]
		}
		o.Groups = append(o.Groups, og)
	}
	for _, name := range m.groups {
		if s.groups[name] == nil {
			o.Groups = append(o.Groups, Group{Name: name, Missing: true, LowestPending: None, NextUndelivered: None})
		}
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
// ingest does with the decision (partition.observe): recover from a loss,
// recreate missing groups, stall on a top that cannot be a record or lift
// the stall once it is gone (checkStray: the groups above the top set back
// first), commit; kafka%8 picks the outcome of the Kafka commit (see
// commitOK). It reports whether the stream was found healthy.
func (m *model) observe(kafka byte) bool {
	o := m.observation()
	d := m.p.Observe(o)
	m.faulted = false
	m.logf("observe %+v -> %+v", o, d)
	m.checkDecision(o, d)
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
		m.recover(d)
		return false
	}
	if d.RecreateGroups {
		m.redis.ensure(m.groups)
		m.logf("groups recreated at 0")
	}
	st := d.Stray
	if st == StrayAboveLogEnd {
		// checkStray reads the log end afresh before blaming the top.
		m.p.SetLogEnd(m.logEnd)
		st = m.p.Stray(o)
	}
	switch {
	case st != NotStray:
		// Found: what was appended goes back to the highest record below
		// the stray top (Redis may have lost records before the stray
		// entry was written over them).
		m.p.Found(o)
		if !m.stalled {
			m.logf("stalled: top %d is %v; %v", o.Top, st, m.p)
		}
		m.stalled = true
	case m.stalled:
		m.redis.ensure(m.groups) // sets back the groups above the top
		// ... and above what was appended (stream.setBack): every group read
		// up to there, and another owner may have appended above it since
		// the operator's XSETID.
		for _, g := range m.redis.groups {
			if b := m.p.Appended(); g.lastDelivered > b {
				g.lastDelivered = b
			}
		}
		m.stalled = false
		m.restart()
		m.logf("stall lifted; groups above the top set back: %v", m.view())
	}
	if d.ShouldCommit && !m.stalled {
		m.commit(d, kafka)
	}
	return !d.RecreateGroups && !m.stalled
}

// checkDecision checks what holds of every Decision.
func (m *model) checkDecision(o Observation, d Decision) {
	if d.Backlog < 0 {
		m.fatalf("negative backlog %d", d.Backlog)
	}
	if d.Stray != NotStray && d.ShouldCommit {
		m.fatalf("a stray top (%v) and a commit %d", d.Stray, d.Commit)
	}
	if !d.Lost && o.Exists && o.TopEntry == TopForeign && d.Stray == NotStray {
		m.fatalf("the top %d is an entry another program wrote, taken for a record", o.Top)
	}
}

// recover is partition.recover after Lost: ensure (the configured groups
// recreated at 0, every group above the top set back), Reset with the top as
// it is now, stall on a top that cannot be a record (Found), fetch again from
// Position.
func (m *model) recover(d Decision) {
	m.redis.ensure(m.groups)
	m.p.Reset(m.redis.top)
	st := m.p.Found(m.observation())
	m.stalled = st != NotStray
	m.restart()
	if st == NotStray && d.Rewind != None && m.next != d.Rewind {
		m.fatalf("after Reset(%d): want Position() = Rewind %d, got %d", m.redis.top, d.Rewind, m.next)
	}
	m.logf("recovered: groups ensured (found %v); %v", st, m.p)
}

// commit is the committer's Kafka commit of d.Commit, with the outcome
// kafka%8 picks, after checking it against the ground truth.
func (m *model) commit(d Decision, kafka byte) {
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
		for _, name := range m.groups {
			if !m.acked[name][off] {
				m.fatalf("commit %d passes record %d, not acknowledged by group %s", d.Commit, off, name)
			}
		}
		// Invariant 2: every other group on the stream holds it too.
		for name, g := range m.redis.groups {
			if g.owed != nil && g.owed[off] && !m.acked[name][off] {
				m.fatalf("commit %d passes record %d, given to group %s (no flag names it) and not acknowledged", d.Commit, off, name)
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
}

// trim is XTRIM MINID <TrimPoint>-0. A stalled partition does not trim.
func (m *model) trim() {
	tp := m.p.TrimPoint()
	if tp == None || !m.redis.exists || m.stalled {
		return
	}
	s := m.redis
	// trimScript: below min(tp, the frontier read afresh over every group
	// on the stream); nothing when a configured group is missing or no
	// group exists. (The checks below hold the tracker's trim point to the
	// ground truth all the same.)
	if len(s.groups) == 0 {
		return
	}
	for _, name := range m.groups {
		if s.groups[name] == nil {
			return
		}
	}
	bound := min(tp, s.top+1)
	for _, g := range s.groups {
		for off := range g.pel {
			bound = min(bound, off)
		}
		if j, _ := slices.BinarySearch(s.entries, g.lastDelivered+1); j < len(s.entries) {
			bound = min(bound, s.entries[j])
		}
	}
	if bound < tp {
		m.logf("trim below %d held at %d by the frontier read afresh", tp, bound)
		tp = bound
	}
	i, _ := slices.BinarySearch(s.entries, tp)
	removed := s.entries[:i]
	for _, off := range removed {
		for name, g := range s.groups {
			if g.pel[off] {
				m.fatalf("trim below %d removes %d, pending in group %s", tp, off, name)
			}
			if off > g.lastDelivered {
				m.fatalf("trim below %d removes %d, not yet delivered to group %s", tp, off, name)
			}
			if g.owed != nil && g.owed[off] && !m.acked[name][off] {
				m.fatalf("trim below %d removes record %d, given to group %s and never acknowledged", tp, off, name)
			}
		}
		for _, name := range m.groups {
			if !s.foreign[off] && !m.acked[name][off] {
				m.fatalf("trim below %d removes record %d, never acknowledged by group %s", tp, off, name)
			}
		}
	}
	for _, off := range removed {
		delete(s.foreign, off)
	}
	s.entries = slices.Clone(s.entries[i:])
	if len(removed) > 0 {
		m.logf("trim below %d: %v", tp, removed)
	}
}

// rebalance hands the partition to a new ingest: it reads the commit from
// Kafka and the stream's top as they are now (assign). When neither says
// anything (no commit, nothing in the stream), the new owner resolves its
// configured start afresh, as any Kafka consumer would (a stream that holds
// only entries another program wrote says nothing either): the records produced
// since the old owner resolved "newest" are not its to deliver. (The old
// owner committed its start at once to make that window small; only a
// commit that failed, then a loss of Redis, leave it open.)
func (m *model) rebalance() {
	noRecord := !slices.ContainsFunc(m.redis.entries, func(off int64) bool { return !m.redis.foreign[off] })
	if m.latest && m.kafka == None && (!m.redis.exists || m.redis.top == None || (noRecord && m.redis.topEntry() != TopRecord)) {
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
	for _, name := range m.groups {
		if !m.acked[name][off] {
			return false
		}
	}
	return true
}

// groupAboveTop reports whether a group's last-delivered-id is above the
// stream's top.
func (m *model) groupAboveTop() bool {
	for _, g := range m.redis.groups {
		if g.lastDelivered > m.redis.top {
			return true
		}
	}
	return false
}

// stray is another program's XADD, dist above the top (it creates the
// stream when it is missing, with no group).
func (m *model) stray(dist int64) {
	s := m.redis
	if !s.exists {
		*s = *newModelStream()
		s.exists, s.top = true, None
	}
	s.xadd(s.top+dist, true)
	m.logf("another program XADDs entry %d (log end %d)", s.top, m.logEnd)
}

// zombie is an old owner (a previous generation) appending the next k
// records above the top, as its append script would: only on a top that is
// a record below the log end, on a stream that exists.
func (m *model) zombie(k int) {
	s := m.redis
	if !s.exists || s.topEntry() != TopRecord || s.top >= m.logEnd {
		return
	}
	// Only records at or above the owner's floor: an old owner that
	// resolved "latest" before this one and appends below its floor while
	// the partition is idle holds the floor's commit until a record of the
	// new owner's follows (no loss; not modelled).
	i, _ := slices.BinarySearch(m.log, max(s.top+1, m.floor))
	batch := m.log[i:min(i+k, len(m.log))]
	for _, off := range batch {
		s.xadd(off, false)
	}
	if len(batch) > 0 {
		m.logf("a zombie appends %v above appended=%d", batch, m.p.Appended())
	}
}

// createGroup is XGROUP CREATE of a group no flag names, at 0 (another
// ingest's --worker-groups) or at $ (an operator), on a stream that exists.
func (m *model) createGroup(b byte) {
	name := foreignGroups[int(b)%len(foreignGroups)]
	s := m.redis
	if !s.exists || s.groups[name] != nil {
		return
	}
	g := &modelGroup{lastDelivered: None, pel: map[int64]bool{}, owed: map[int64]bool{}}
	if b&2 != 0 {
		g.lastDelivered = s.top // $: given only what is appended from now
	} else {
		for _, off := range s.entries {
			if !s.foreign[off] {
				g.owed[off] = true
			}
		}
	}
	s.groups[name] = g
	m.faulted = true
	m.logf("XGROUP CREATE %s at %d", name, g.lastDelivered)
}

// xdel is an operator's XDEL of an entry another program wrote. A worker
// that had it pending acknowledges it (it is no record: nothing to do).
func (m *model) xdel(pick int) {
	s := m.redis
	if !s.exists || len(s.foreign) == 0 {
		return
	}
	fs := slices.Sorted(maps.Keys(s.foreign))
	off := fs[pick%len(fs)]
	m.del(off)
	m.logf("XDEL %d", off)
}

func (m *model) del(off int64) {
	s := m.redis
	s.entries = slices.DeleteFunc(s.entries, func(o int64) bool { return o == off })
	delete(s.foreign, off)
	for _, g := range s.groups {
		delete(g.pel, off)
	}
}

// xsetid is an operator's XSETID: to the status hash's top (Appended), one
// to eight back or forward, or to the last entry. Redis refuses an ID below
// the last entry.
func (m *model) xsetid(b byte) {
	s := m.redis
	if !s.exists {
		return
	}
	var v int64
	switch b % 4 {
	case 0:
		v = m.p.Appended()
	case 1:
		v = s.top - 1 - int64(b/4%8)
	case 2:
		// Forward, only once the group has a commit: without one, a top
		// whose entry is gone found by a new owner cannot be told from a
		// stream trimmed under a commit Kafka has since expired
		// (offsets.retention.minutes): not modelled.
		if m.kafka == None {
			return
		}
		v = s.top + 1 + int64(b/4%8)
	default:
		v = s.maxEntry()
	}
	v = max(v, None)
	if v < s.maxEntry() {
		m.logf("XSETID %d refused: below the last entry %d", v, s.maxEntry())
		return
	}
	s.top = v
	m.logf("XSETID %d", v)
}

// setid is an operator's XGROUP SETID of a group by entries back (a replay).
func (m *model) setid(name string, by int64) {
	g := m.redis.groups[name]
	if !m.redis.exists || g == nil {
		return
	}
	g.lastDelivered = max(None, g.lastDelivered-by)
	m.faulted = true
	m.logf("XGROUP SETID %s %d", name, g.lastDelivered)
}

// runbook is docs/operations.md "A stalled partition", on a stall: XDEL the
// entries another program wrote, then XSETID the stream's top to the status
// hash's top (Appended) — or, when Redis refuses that, to the last entry,
// the highest record left below the stray ones.
func (m *model) runbook() {
	s := m.redis
	if !m.stalled || !s.exists {
		return
	}
	for _, off := range slices.Sorted(maps.Keys(s.foreign)) {
		m.del(off)
	}
	v := max(m.p.Appended(), s.maxEntry())
	if v < s.top {
		s.top = v
	}
	m.logf("runbook: XDEL the stray entries, XSETID %d: %v", v, m.view())
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
		m.runbook()
		for range 100 {
			next, top := m.next, m.redis.top
			m.append(64)
			if m.next == next && m.redis.top == top {
				break
			}
		}
		for _, name := range m.allNames() {
			m.deliver(name, len(m.redis.entries)+1)
			for m.redis.exists && m.redis.groups[name] != nil && len(m.redis.groups[name].pel) > 0 {
				m.ack(name, 0)
			}
		}
	}
	m.fatalf("liveness: commit %d never reached the log end %d (log %v)", m.kafka, m.logEnd, m.log)
}
