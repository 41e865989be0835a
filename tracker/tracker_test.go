package tracker

import (
	"fmt"
	"testing"
)

const none = None

// group builds a Group: lowest pending and next undelivered offsets (None for
// nothing), the pending count derived from whether anything is pending.
func group(name string, lowestPending, nextUndelivered int64) Group {
	g := Group{Name: name, LowestPending: lowestPending, NextUndelivered: nextUndelivered}
	if lowestPending != None {
		g.Pending = 1
	}
	return g
}

func TestGroupFrontier(t *testing.T) {
	tests := []struct {
		name string
		g    Group
		top  int64
		want int64
	}{
		{"nothing delivered", group("g", none, 0), 9, 0},
		{"pending below next undelivered", group("g", 3, 7), 9, 3},
		{"pending at the start", group("g", 0, 1), 9, 0},
		{"none pending, some undelivered", group("g", none, 7), 9, 7},
		{"all delivered, none pending", group("g", none, none), 9, 10},
		{"all delivered, the top pending", group("g", 9, none), 9, 9},
		{"all delivered, some pending", group("g", 4, none), 9, 4},
		{"empty stream, nothing appended", group("g", none, none), none, 0},
		// Stream holds 0, 1, 5, 6 (2..4 compacted away); 0 and 1 delivered
		// and acked: the next entry is 5, and offsets 2..4 need no ack.
		{"Kafka gap below next undelivered", group("g", none, 5), 6, 5},
		// Same stream, everything delivered, 1 still pending.
		{"Kafka gap above the pending entry", group("g", 1, none), 6, 1},
		// Stream 0..4 then 10 (transaction markers 5..9): all acked.
		{"Kafka gap before the top", group("g", none, none), 10, 11},
		// Not a state Redis produces (pending entries are <= last-delivered),
		// but the frontier is the minimum whatever the order.
		{"next undelivered below pending", group("g", 8, 5), 9, 5},
		{"large offsets", group("g", 1<<40, 1<<40+5), 1 << 41, 1 << 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.g.Frontier(tt.top); got != tt.want {
				t.Fatalf("%+v.Frontier(%d): want %d, got %d", tt.g, tt.top, tt.want, got)
			}
		})
	}
}

func TestObservationFrontier(t *testing.T) {
	tests := []struct {
		name   string
		o      Observation
		want   int64
		wantOK bool
	}{
		{
			name: "one group with a pending entry",
			o:    Observation{Exists: true, Top: 9, Length: 10, Groups: []Group{group("a", 3, 7)}},
			want: 3, wantOK: true,
		},
		{
			name: "one group, nothing pending, all delivered",
			o:    Observation{Exists: true, Top: 9, Length: 10, Groups: []Group{group("a", none, none)}},
			want: 10, wantOK: true,
		},
		{
			name: "several groups: the slowest wins",
			o: Observation{Exists: true, Top: 9, Length: 10, Groups: []Group{
				group("fast", none, none), group("slow", 2, 5), group("mid", none, 6),
			}},
			want: 2, wantOK: true,
		},
		{
			name: "several groups: one has not started",
			o: Observation{Exists: true, Top: 9, Length: 10, Groups: []Group{
				group("fast", none, none), group("new", none, 0),
			}},
			want: 0, wantOK: true,
		},
		{
			name: "several groups all done",
			o: Observation{Exists: true, Top: 9, Length: 10, Groups: []Group{
				group("a", none, none), group("b", none, none), group("c", none, none),
			}},
			want: 10, wantOK: true,
		},
		{
			name: "stream trimmed: frontier from what remains",
			o:    Observation{Exists: true, Top: 99, Length: 10, Groups: []Group{group("a", 95, 97)}},
			want: 95, wantOK: true,
		},
		{
			name: "empty stream with groups",
			o:    Observation{Exists: true, Top: none, Groups: []Group{group("a", none, none)}},
			want: 0, wantOK: true,
		},
		{
			name: "missing group",
			o: Observation{Exists: true, Top: 9, Length: 10, Groups: []Group{
				group("a", none, none), {Name: "b", Missing: true, LowestPending: none, NextUndelivered: none},
			}},
			wantOK: false,
		},
		{
			name: "missing group listed first",
			o: Observation{Exists: true, Top: 9, Length: 10, Groups: []Group{
				{Name: "b", Missing: true, LowestPending: none, NextUndelivered: none}, group("a", 0, 1),
			}},
			wantOK: false,
		},
		{
			name:   "no stream",
			o:      Observation{Exists: false, Top: none, Groups: []Group{group("a", none, none)}},
			wantOK: false,
		},
		{
			name:   "no group configured",
			o:      Observation{Exists: true, Top: 9, Length: 10},
			wantOK: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := tt.o.Frontier()
			if ok != tt.wantOK || (ok && got != tt.want) {
				t.Fatalf("Frontier(): want (%d, %v), got (%d, %v)", tt.want, tt.wantOK, got, ok)
			}
		})
	}
}

func TestPartitionStart(t *testing.T) {
	tests := []struct {
		name      string
		committed int64
		top       int64
		appended  []int64 // MarkAppended calls after NewPartition
		want      int64
	}{
		{"new group, new stream: the configured start", none, none, nil, none},
		{"committed, empty stream", 10, none, nil, 10},
		{"committed 0, empty stream", 0, none, nil, 0},
		{"no commit, stream has entries", none, 5, nil, 6},
		{"commit ahead of the stream (trimmed or recreated)", 10, 5, nil, 10},
		{"stream ahead of the commit (workers behind)", 3, 9, nil, 10},
		{"commit right after the top", 10, 9, nil, 10},
		{"after appends", 10, none, []int64{12, 15}, 16},
		{"appends never move it back", 0, 20, []int64{7}, 21},
		{"first append on a new stream", none, none, []int64{0}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPartition(tt.committed, tt.top)
			for _, a := range tt.appended {
				p.MarkAppended(a)
			}
			if got := p.Start(); got != tt.want {
				t.Fatalf("NewPartition(%d, %d) + MarkAppended%v: Start(): want %d, got %d (%v)",
					tt.committed, tt.top, tt.appended, tt.want, got, p)
			}
		})
	}
}

// step is one observation fed to a Partition and what must come of it.
type step struct {
	// mark: MarkAppended calls before the observation (the ingest's appends).
	mark []int64
	obs  Observation
	want Decision
	// commit: call MarkCommitted(want.Commit) when the decision commits.
	commit bool
	// then: the partition's state after the step.
	committed, appended, trim int64
}

func runSteps(t *testing.T, p *Partition, steps []step) {
	t.Helper()
	for i, s := range steps {
		for _, m := range s.mark {
			p.MarkAppended(m)
		}
		got := p.Observe(s.obs)
		if got != s.want {
			t.Fatalf("step %d: Observe(%+v):\nwant %+v\ngot  %+v", i, s.obs, s.want, got)
		}
		if s.commit && got.ShouldCommit {
			p.MarkCommitted(got.Commit)
		}
		if p.Committed() != s.committed || p.Appended() != s.appended || p.TrimPoint() != s.trim {
			t.Fatalf("step %d: want committed=%d appended=%d trim=%d, got committed=%d appended=%d trim=%d",
				i, s.committed, s.appended, s.trim, p.Committed(), p.Appended(), p.TrimPoint())
		}
	}
}

func obs(top, length int64, groups ...Group) Observation {
	return Observation{Exists: true, Top: top, Length: length, Groups: groups}
}

func TestPartitionObserve(t *testing.T) {
	tests := []struct {
		name           string
		committed, top int64
		steps          []step
	}{
		{
			name:      "pending entry holds the commit, its ack releases it",
			committed: none, top: none,
			steps: []step{
				{mark: []int64{4}, obs: obs(4, 5, group("g", 2, none)), commit: true,
					want:      Decision{Commit: 2, ShouldCommit: true, Backlog: 3},
					committed: 2, appended: 4, trim: 2},
				{obs: obs(4, 5, group("g", none, none)), commit: true,
					want:      Decision{Commit: 5, ShouldCommit: true, Backlog: 0},
					committed: 5, appended: 4, trim: 5},
			},
		},
		{
			name:      "frontier at the commit: nothing to commit",
			committed: 5, top: 9,
			steps: []step{
				{obs: obs(9, 5, group("g", 5, 7)), commit: true,
					want:      Decision{Backlog: 5},
					committed: 5, appended: 9, trim: 5},
			},
		},
		{
			name:      "commits are monotonic: a frontier below the commit gives none",
			committed: none, top: none,
			steps: []step{
				{mark: []int64{9}, obs: obs(9, 10, group("g", none, 8)), commit: true,
					want:      Decision{Commit: 8, ShouldCommit: true, Backlog: 2},
					committed: 8, appended: 9, trim: 8},
				// Redis came back from a snapshot with the same top but
				// older group state: 3 is pending again.
				{obs: obs(9, 10, group("g", 3, 6)), commit: true,
					want:      Decision{Backlog: 7},
					committed: 8, appended: 9, trim: 3},
				{obs: obs(9, 10, group("g", 7, none)), commit: true,
					want:      Decision{Backlog: 3},
					committed: 8, appended: 9, trim: 7},
				{mark: []int64{12}, obs: obs(12, 13, group("g", none, 12)), commit: true,
					want:      Decision{Commit: 12, ShouldCommit: true, Backlog: 1},
					committed: 12, appended: 12, trim: 12},
			},
		},
		{
			name:      "an uncommitted decision is offered again",
			committed: none, top: 9,
			steps: []step{
				{obs: obs(9, 10, group("g", none, 4)), commit: false,
					want:      Decision{Commit: 4, ShouldCommit: true, Backlog: 6},
					committed: none, appended: 9, trim: none},
				{obs: obs(9, 10, group("g", none, 4)), commit: true,
					want:      Decision{Commit: 4, ShouldCommit: true, Backlog: 6},
					committed: 4, appended: 9, trim: 4},
			},
		},
		{
			name:      "several groups: the commit waits for the slowest",
			committed: 0, top: 9,
			steps: []step{
				{obs: obs(9, 10, group("a", none, none), group("b", 1, 3)), commit: true,
					want:      Decision{Commit: 1, ShouldCommit: true, Backlog: 9},
					committed: 1, appended: 9, trim: 1},
				{obs: obs(9, 10, group("a", none, none), group("b", none, none)), commit: true,
					want:      Decision{Commit: 10, ShouldCommit: true, Backlog: 0},
					committed: 10, appended: 9, trim: 10},
			},
		},
		{
			name:      "Kafka gaps: the commit jumps over them",
			committed: 2, top: 1,
			// Stream holds 0, 1, 5, 6; offsets 2..4 do not exist in Kafka.
			steps: []step{
				{mark: []int64{6}, obs: obs(6, 4, group("g", none, 5)), commit: true,
					want:      Decision{Commit: 5, ShouldCommit: true, Backlog: 2},
					committed: 5, appended: 6, trim: 5},
				{obs: obs(6, 4, group("g", none, none)), commit: true,
					want:      Decision{Commit: 7, ShouldCommit: true, Backlog: 0},
					committed: 7, appended: 6, trim: 7},
			},
		},
		{
			// Issue 7 point 7: the commit never follows a top this ingest
			// did not append, until its own appends (duplicates found
			// there) cover it.
			name:      "stream ahead of what this ingest appended (another owner): not a loss, commit clamped",
			committed: 3, top: 5,
			steps: []step{
				{obs: obs(9, 10, group("g", none, 7)), commit: true,
					want:      Decision{Commit: 6, ShouldCommit: true, Backlog: 3, Ahead: true},
					committed: 6, appended: 5, trim: 6},
				{mark: []int64{9}, obs: obs(9, 10, group("g", none, 7)), commit: true,
					want:      Decision{Commit: 7, ShouldCommit: true, Backlog: 3},
					committed: 7, appended: 9, trim: 7},
			},
		},
		{
			name:      "trim point below the commit after a rollback of the groups",
			committed: 10, top: 12,
			steps: []step{
				{obs: obs(12, 13, group("g", 4, 6)), commit: true,
					want:      Decision{Backlog: 9},
					committed: 10, appended: 12, trim: 4},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runSteps(t, NewPartition(tt.committed, tt.top), tt.steps)
		})
	}
}

func TestPartitionLost(t *testing.T) {
	missing := Observation{Exists: false, Top: 7, Groups: []Group{{Name: "g", Missing: true}}}
	tests := []struct {
		name           string
		committed, top int64
		appended       int64 // MarkAppended after NewPartition, None for no call
		obs            Observation
		wantLost       bool
		wantRewind     int64
	}{
		{"stream gone, commit known", 4, 9, none, missing, true, 4},
		{"stream gone, commit 0", 0, 9, none, missing, true, 0},
		{"stream gone, Top ignored when it does not exist", 4, 9, none, missing, true, 4},
		{"stream gone after appends", 4, none, 12, missing, true, 4},
		{"top below appended, top+1 above the commit", 4, 9, none, obs(6, 7, group("g", none, none)), true, 7},
		{"top below appended, commit above top+1", 8, 9, none, obs(5, 6, group("g", none, none)), true, 8},
		{"top below appended, commit at top+1", 6, 9, none, obs(5, 6, group("g", none, none)), true, 6},
		{"stream recreated empty", 4, 9, none, obs(none, 0, group("g", none, 0)), true, 4},
		// The first observation saw everything below 9 acknowledged: with
		// no commit, that frontier (the floor) stands in for one.
		{"top below appended, no commit", none, none, 9, obs(5, 6, group("g", none, none)), true, 9},
		{"top equal to appended: not lost", 4, 9, none, obs(9, 10, group("g", none, 4)), false, 0},
		{"top above appended: not lost", 4, 9, none, obs(11, 12, group("g", none, 4)), false, 0},
		{"groups missing, stream intact: not lost", 4, 9, none, obs(9, 10, Group{Name: "g", Missing: true}), false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPartition(tt.committed, tt.top)
			if tt.appended != none {
				p.MarkAppended(tt.appended)
			}
			// A first observation of the intact stream sets a frontier, so
			// the test also sees that a loss forgets it.
			appended := p.Appended()
			if appended != none {
				p.Observe(obs(appended, appended+1, group("g", none, appended)))
			}
			d := p.Observe(tt.obs)
			if d.Lost != tt.wantLost {
				t.Fatalf("Observe(%+v): want Lost=%v, got %+v", tt.obs, tt.wantLost, d)
			}
			if !tt.wantLost {
				return
			}
			if !d.RecreateGroups || d.ShouldCommit || d.Rewind != tt.wantRewind {
				t.Fatalf("Observe(%+v): want Lost, RecreateGroups, no commit, Rewind=%d; got %+v", tt.obs, tt.wantRewind, d)
			}
			if tp := p.TrimPoint(); tp != None {
				t.Fatalf("TrimPoint() after a loss: want None, got %d", tp)
			}
			if c := p.Committed(); c != tt.committed {
				t.Fatalf("Committed() after a loss: want %d (unchanged), got %d", tt.committed, c)
			}
			// The caller recreates the groups and resets the partition to
			// the stream's top: the next Start is the rewind point.
			top := tt.obs.Top
			if !tt.obs.Exists {
				top = None
			}
			p.Reset(top)
			if got := p.Start(); got != d.Rewind {
				t.Fatalf("Reset(%d); Start(): want the rewind point %d, got %d", top, d.Rewind, got)
			}
			if got := p.Appended(); got != top {
				t.Fatalf("Reset(%d); Appended(): want %d, got %d", top, top, got)
			}
			// The recreated stream is then observed as healthy.
			d = p.Observe(Observation{Exists: true, Top: top, Length: 0, Groups: []Group{group("g", none, none)}})
			if d.Lost {
				t.Fatalf("Observe after Reset(%d): want not lost, got %+v", top, d)
			}
		})
	}
}

// TestPartitionStartAfterLossBeforeFirstCommit: an ingest configured to start
// at the newest offset found the log end at 100, appended 100..105, and Redis
// lost the stream before anything was committed. The records 100..105 must be
// fetched again (invariant 5: duplicates, never lost records). Start() must
// therefore not return None — the caller would resolve its configured start
// again, now past 105 — and must not be above 100.
func TestPartitionStartAfterLossBeforeFirstCommit(t *testing.T) {
	p := NewPartition(None, None)
	if got := p.Start(); got != None {
		t.Fatalf("Start() of a new partition: want None (use the configured start), got %d", got)
	}
	resolved := 0
	resolve := func() (int64, error) { resolved++; return 100, nil } // "latest": the log end
	if got, err := p.Position(resolve); got != 100 || err != nil {
		t.Fatalf("Position(): want 100 (resolved), got %d, %v", got, err)
	}
	// The resolved start is committed at once, even before any append.
	d := p.Observe(Observation{Exists: true, Top: None, Groups: []Group{group("g", none, none)}})
	if !d.ShouldCommit || d.Commit != 100 {
		t.Fatalf("Observe(empty stream) after resolving 100: want commit 100, got %+v", d)
	}
	p.MarkAppended(105)
	d = p.Observe(Observation{Exists: false, Top: None})
	if !d.Lost {
		t.Fatalf("Observe(stream gone): want Lost, got %+v", d)
	}
	p.Reset(None)
	got, err := p.Position(resolve)
	if err != nil || got == None || got > 100 {
		t.Fatalf("Position() after the loss: want an offset <= 100 (the rewind point is %d), got %d, %v", d.Rewind, got, err)
	}
	if got != d.Rewind {
		t.Errorf("Position() after Reset: want the rewind point %d, got %d", d.Rewind, got)
	}
	if resolved != 1 {
		t.Errorf("the configured start was resolved %d times, want once", resolved)
	}
}

// TestPartitionHandOverThenLoss: issue 7 point 0. A new owner takes over a
// partition whose stream holds entries not yet acknowledged (committed 40,
// top 999), then Redis restarts empty. It must fetch again from the commit —
// max(committed, top+1) with the top read after the loss — not from the top
// it read at assignment: the entries 40..999 only lived in Redis.
func TestPartitionHandOverThenLoss(t *testing.T) {
	never := func() (int64, error) { t.Fatal("resolve called: something says where to start"); return 0, nil }
	tests := []struct {
		name       string
		committed  int64
		top        int64
		frontier   int64 // of the first observation (every entry from it is unacknowledged)
		wantStart  int64
		wantRewind int64
	}{
		{"commit below the stream's top", 40, 999, 40, 1000, 40},
		{"no commit: the frontier observed at assignment", none, 999, 10, 1000, 10},
		{"no commit, all acknowledged", none, 999, 1000, 1000, 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPartition(tt.committed, tt.top)
			if got, _ := p.Position(never); got != tt.wantStart {
				t.Fatalf("Position() at assignment: want %d, got %d", tt.wantStart, got)
			}
			p.Observe(obs(tt.top, tt.top+1-tt.frontier, group("g", none, tt.frontier)))
			d := p.Observe(Observation{Exists: false, Top: None})
			if !d.Lost || d.Rewind != tt.wantRewind {
				t.Fatalf("Observe(stream gone): want Lost, Rewind %d; got %+v", tt.wantRewind, d)
			}
			p.Reset(None)
			if got, _ := p.Position(never); got != tt.wantRewind {
				t.Fatalf("Position() after the loss: want %d, got %d (%v)", tt.wantRewind, got, p)
			}
		})
	}
}

// TestPartitionCommitClamped (issue 7 point 7): another program wrote entry
// 199-1 into a stream whose top was 99, with the Kafka log end at 104, and a
// worker acknowledged it. Nothing is committed while it is there (a stalled
// partition commits nothing), never 200; a top ahead that can be a record
// (another owner's appends) moves the commit only up to what this ingest
// appended, and never past the log end.
func TestPartitionCommitClamped(t *testing.T) {
	p := NewPartition(100, 99)
	p.SetLogEnd(104)
	d := p.Observe(obs(199, 101, group("g", none, none)))
	if !d.Ahead || d.Stray != StrayAboveLogEnd || d.ShouldCommit || d.Lost {
		t.Fatalf("stray entry 199 above the top 99: want Ahead, Stray and no commit, got %+v", d)
	}
	p.MarkAppended(103) // the ingest's own records 100..103 (found as "duplicates" under 199)
	if d = p.Observe(obs(199, 105, group("g", none, none))); d.Stray != StrayAboveLogEnd || d.ShouldCommit {
		t.Fatalf("after appending up to 103, 199 still there: want Stray and no commit, got %+v", d)
	}
	// The same with another owner's record 103 on top (below the log end).
	p = NewPartition(100, 99)
	p.SetLogEnd(104)
	if d = p.Observe(obs(103, 4, group("g", none, none))); !d.Ahead || d.Stray != NotStray || d.ShouldCommit {
		t.Fatalf("another owner's 100..103 above what this ingest appended: want Ahead, not stray, no commit past 100, got %+v", d)
	}
	p.MarkAppended(102)
	d = p.Observe(obs(103, 4, group("g", none, none)))
	if !d.Ahead || !d.ShouldCommit || d.Commit != 103 {
		t.Fatalf("after appending up to 102: want commit 103 (not 104), got %+v", d)
	}
	p.MarkCommitted(d.Commit)
	p.SetLogEnd(102) // a log end that went back (truncation): never passed
	p.MarkAppended(103)
	if d = p.Observe(obs(103, 4, group("g", none, none))); d.ShouldCommit {
		t.Fatalf("log end 102 below the commit 103 (and the top): want no commit, got %+v", d)
	}
}

// TestPartitionStray (issue 7 point 7, review): which tops cannot be a record
// of the partition, and what Found makes of one found at assignment. A top
// whose entry is gone is a stray at or above the commit (kbridge trims only
// below it) or above what this ingest appended — unless nothing says so (no
// commit, found at assignment). Found takes Appended back to the highest
// record below the stray, never to the stray itself, so that the status top
// (and the runbook's XSETID) point below it and the records above are
// fetched again.
func TestPartitionStray(t *testing.T) {
	at := func(top int64, e TopEntry, below int64) Observation {
		o := obs(top, 1, group("g", none, none))
		o.TopEntry, o.RecordBelow = e, below
		return o
	}
	tests := []struct {
		name              string
		committed, top    int64 // NewPartition
		appended          int64 // MarkAppended, none: nothing
		logEnd            int64
		o                 Observation
		want              Stray
		wantFoundAppended int64 // Appended() after Found at assignment (appended none)
	}{
		{"a record", 100, 99, none, 200, at(99, TopRecord, 0), NotStray, 99},
		{"trimmed top below the commit", 100, 99, none, 200, at(99, TopGone, none), NotStray, 99},
		{"foreign top at assignment", 100, 150, none, 200, at(150, TopForeign, 120), StrayForeign, 120},
		{"foreign top, records below trimmed", 100, 150, none, 200, at(150, TopForeign, none), StrayForeign, 99},
		{"foreign top, a record below the commit", 100, 150, none, 200, at(150, TopForeign, 80), StrayForeign, 99},
		{"deleted top at the commit", 100, 100, none, 200, at(100, TopGone, none), StrayDeleted, 99},
		{"deleted top above the commit, records below", 100, 150, none, 200, at(150, TopGone, 130), StrayDeleted, 130},
		{"deleted top above what was appended", 100, 99, 120, 200, at(150, TopGone, 120), StrayDeleted, 120},
		{"deleted top without a commit, found at assignment", none, 150, none, 200, at(150, TopGone, none), NotStray, 150},
		{"deleted top without a commit, above what was appended", none, 99, 120, 200, at(150, TopGone, 120), StrayDeleted, 120},
		{"record at the log end", 100, 99, none, 200, at(200, TopRecord, 0), StrayAboveLogEnd, 99},
		{"another owner's record ahead", 100, 99, none, 200, at(150, TopRecord, 0), NotStray, 150},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPartition(tt.committed, tt.top)
			if tt.appended != none {
				p.MarkAppended(tt.appended)
			}
			p.SetLogEnd(tt.logEnd)
			if got := p.Stray(tt.o); got != tt.want {
				t.Fatalf("Stray(top %d %v): want %v, got %v (%v)", tt.o.Top, tt.o.TopEntry, tt.want, got, p)
			}
			d := p.Observe(tt.o)
			if d.Stray != tt.want || (tt.want != NotStray && d.ShouldCommit) {
				t.Fatalf("Observe: want Stray %v and no commit while stray, got %+v", tt.want, d)
			}
			if tt.appended != none {
				return
			}
			// At assignment: NewPartition with the top found, then Found.
			p = NewPartition(tt.committed, tt.o.Top)
			p.SetLogEnd(tt.logEnd)
			if got := p.Found(tt.o); got != tt.want {
				t.Fatalf("Found: want %v, got %v", tt.want, got)
			}
			if got := p.Appended(); got != tt.wantFoundAppended {
				t.Fatalf("Found: want Appended() %d, got %d", tt.wantFoundAppended, got)
			}
			start := p.Start()
			if tt.committed != none && start != max(tt.committed, tt.wantFoundAppended+1) {
				t.Fatalf("Found: want Start() max(committed, appended+1), got %d (%v)", start, p)
			}
			if tt.want != NotStray && start > tt.o.Top && tt.o.Top >= tt.committed {
				t.Fatalf("Found: Start() %d skips the records below the stray %d", start, tt.o.Top)
			}
		})
	}
}

// TestPartitionSkipped (issue 7 point 4): offsets that hold no record to
// deliver (a transaction marker at the tail, compacted records) let a fully
// acknowledged partition commit past them, up to the log end; a range that
// does not continue what is accounted for counts for nothing.
func TestPartitionSkipped(t *testing.T) {
	p := NewPartition(0, None)
	p.MarkAppended(5)
	p.SetLogEnd(8)
	all := obs(5, 6, group("g", none, none))
	if d := p.Observe(all); d.Commit != 6 {
		t.Fatalf("all acknowledged, nothing skipped: want commit 6, got %+v", d)
	}
	p.Skipped(10, 12) // not contiguous: ignored
	if d := p.Observe(all); d.Commit != 6 {
		t.Fatalf("a gap before the skipped range: want commit 6, got %+v", d)
	}
	p.Skipped(6, 8) // the marker(s) at the tail
	if d := p.Observe(all); d.Commit != 8 {
		t.Fatalf("6..7 hold nothing: want commit 8 (the log end), got %+v", d)
	}
	if d := p.Observe(obs(5, 6, group("g", 4, none))); d.Commit != 4 {
		t.Fatalf("4 pending: want commit 4, got %+v", d)
	}
	p.Skipped(8, 20) // beyond the log end 8: commits stop at the log end
	if d := p.Observe(all); d.Commit != 8 {
		t.Fatalf("skipped up to 20, log end 8: want commit 8, got %+v", d)
	}
	if got := p.Start(); got != 6 {
		t.Errorf("Start() = %d: Skipped must not move the fetch position (the caller does), want 6", got)
	}
}

// TestPartitionNoCommitBeforeFirstAppend: an empty stream (created with its
// groups, nothing appended yet) gives no commit. Committing 0 there would
// replace "no commit" in Kafka by offset 0, and the next owner of the
// partition would start at 0 instead of the configured start offset
// (re-reading the whole topic when the configuration says "newest").
func TestPartitionNoCommitBeforeFirstAppend(t *testing.T) {
	tests := []struct {
		name      string
		committed int64
	}{
		{"no commit in Kafka", None},
		{"commit in Kafka, stream recreated", 50},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPartition(tt.committed, None)
			d := p.Observe(Observation{Exists: true, Top: None, Groups: []Group{group("g", none, none)}})
			if d.ShouldCommit || d.Lost || d.RecreateGroups || d.Backlog != 0 {
				t.Fatalf("Observe(empty stream): want nothing to do, got %+v", d)
			}
			if got := p.Start(); got != max(tt.committed, None) {
				t.Fatalf("Start(): want %d, got %d", max(tt.committed, None), got)
			}
		})
	}
}

func TestPartitionRecreateGroups(t *testing.T) {
	tests := []struct {
		name        string
		obs         Observation
		wantBacklog int64
	}{
		{"the only group missing", obs(9, 6, Group{Name: "g", Missing: true}), 6},
		{"one of two groups missing", obs(9, 10, group("a", 2, 5), Group{Name: "b", Missing: true}), 10},
		{"no group configured", obs(9, 4), 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPartition(3, 9)
			p.Observe(obs(9, 10, group("a", 5, 7))) // a known frontier before
			if tp := p.TrimPoint(); tp != 3 {
				t.Fatalf("TrimPoint() before: want 3, got %d", tp)
			}
			d := p.Observe(tt.obs)
			want := Decision{RecreateGroups: true, Backlog: tt.wantBacklog}
			if d != want {
				t.Fatalf("Observe(%+v):\nwant %+v\ngot  %+v", tt.obs, want, d)
			}
			if tp := p.TrimPoint(); tp != None {
				t.Fatalf("TrimPoint() with a group missing: want None, got %d", tp)
			}
			if c := p.Committed(); c != 3 {
				t.Fatalf("Committed(): want 3, got %d", c)
			}
		})
	}
}

func TestPartitionTrimPoint(t *testing.T) {
	tests := []struct {
		name          string
		committed     int64
		obs           *Observation // nil: never observed
		markCommitted int64        // None: no MarkCommitted after the observation
		want          int64
	}{
		{"never observed", 10, nil, none, none},
		{"nothing committed", none, ptr(obs(9, 10, group("g", none, 5))), none, none},
		{"commit below the frontier", 4, ptr(obs(9, 10, group("g", none, 7))), none, 4},
		{"frontier committed", none, ptr(obs(9, 10, group("g", none, 7))), 7, 7},
		{"frontier below the commit (snapshot)", 8, ptr(obs(9, 10, group("g", 3, 6))), none, 3},
		{"all acked and committed", none, ptr(obs(9, 10, group("g", none, none))), 10, 10},
		{"slowest group decides", 10, ptr(obs(9, 10, group("a", none, none), group("b", 6, 8))), none, 6},
		{"stream gone", 4, ptr(Observation{Exists: false}), none, none},
		{"group missing", 4, ptr(obs(9, 10, Group{Name: "g", Missing: true})), none, none},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPartition(tt.committed, 9)
			if tt.obs != nil {
				p.Observe(*tt.obs)
			}
			if tt.markCommitted != none {
				p.MarkCommitted(tt.markCommitted)
			}
			if got := p.TrimPoint(); got != tt.want {
				t.Fatalf("TrimPoint(): want %d, got %d (%v)", tt.want, got, p)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestPartitionBacklog(t *testing.T) {
	tests := []struct {
		name string
		obs  Observation
		want int64
	}{
		{"all acked", obs(9, 10, group("g", none, none)), 0},
		{"nothing delivered", obs(9, 10, group("g", none, 0)), 10},
		{"one pending at the bottom", obs(9, 10, group("g", 0, none)), 10},
		{"pending in the middle", obs(9, 10, group("g", 3, 7)), 7},
		{"slowest group", obs(9, 10, group("a", none, none), group("b", none, 8)), 2},
		{"trimmed stream", obs(99, 10, group("g", none, 95)), 5},
		{"Kafka gaps count high", obs(10, 2, group("g", none, 0)), 11},
		{"group missing: the stream length", obs(9, 7, Group{Name: "g", Missing: true}), 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPartition(None, None)
			if got := p.Observe(tt.obs).Backlog; got != tt.want {
				t.Fatalf("Observe(%+v).Backlog: want %d, got %d", tt.obs, tt.want, got)
			}
		})
	}
}

func TestPartitionMarkCommitted(t *testing.T) {
	tests := []struct {
		name  string
		start int64
		marks []int64
		want  int64
	}{
		{"first commit", none, []int64{5}, 5},
		{"forward", 5, []int64{7, 9}, 9},
		{"never backwards", 9, []int64{3}, 9},
		{"late commit of an older decision", none, []int64{8, 4}, 8},
		{"None is ignored", 5, []int64{none}, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPartition(tt.start, none)
			for _, m := range tt.marks {
				p.MarkCommitted(m)
			}
			if got := p.Committed(); got != tt.want {
				t.Fatalf("Committed(): want %d, got %d", tt.want, got)
			}
		})
	}
}

func TestPartitionString(t *testing.T) {
	p := NewPartition(4, 9)
	p.Observe(obs(9, 10, group("g", 6, none)))
	want := "committed=4 appended=9 covered=10 log_end=-1 frontier=6 floor=-1"
	if got := fmt.Sprint(p); got != want {
		t.Fatalf("String(): want %q, got %q", want, got)
	}
}
