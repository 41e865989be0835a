package worker

import (
	"container/heap"
	"fmt"
	"testing"
	"time"
)

// schedSim drives a scheduler without Redis or goroutines: handler runs
// are events on a simulated clock, each taking its stream's duration.
type schedSim struct {
	s       *scheduler
	now     time.Duration // simulated clock
	runs    simHeap
	dur     map[string]time.Duration
	done    map[string]int
	peak    map[string]int
	fail    map[string]bool // streams whose every attempt fails: retried an hour later (a real timer: never, in a test)
	failed  map[string]int
	started int
}

type simRun struct {
	t   *task
	end time.Duration
}

type simHeap []simRun

func (h simHeap) Len() int           { return len(h) }
func (h simHeap) Less(i, j int) bool { return h[i].end < h[j].end }
func (h simHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *simHeap) Push(x any)        { *h = append(*h, x.(simRun)) }
func (h *simHeap) Pop() any {
	old := *h
	r := old[len(old)-1]
	*h = old[:len(old)-1]
	return r
}

func newSchedSim(conc, readAhead int, dur map[string]time.Duration) *schedSim {
	sim := &schedSim{dur: dur, done: map[string]int{}, peak: map[string]int{}, fail: map[string]bool{}, failed: map[string]int{}}
	sim.s = newScheduler(conc, readAhead, sim.begin)
	base := time.Now()
	sim.s.clock = func() time.Time { return base.Add(sim.now) }
	return sim
}

// begin is the scheduler's start: the run ends after its stream's duration.
func (sim *schedSim) begin(t *task) {
	sim.started++
	heap.Push(&sim.runs, simRun{t, sim.now + sim.dur[t.m.Stream]})
}

// read queues n entries of stream, as a read of it would (a read whose
// COUNT is not known: the stream is not full).
func (sim *schedSim) read(stream string, n int) {
	ts := make([]*task, n)
	for i := range ts {
		ts[i] = &task{m: &Message{Stream: stream}}
	}
	sim.s.readDone([]string{stream}, 0, ts)
}

// step ends the earliest run; the slot takes the task finish hands it.
func (sim *schedSim) step() {
	r := heap.Pop(&sim.runs).(simRun)
	sim.now = max(sim.now, r.end)
	res, at := handled, time.Time{}
	if sim.fail[r.t.m.Stream] {
		res, at = retry, time.Now().Add(time.Hour)
		sim.failed[r.t.m.Stream]++
	} else {
		sim.done[r.t.m.Stream]++
	}
	next, _ := sim.s.finish(r.t, sim.dur[r.t.m.Stream], res, at)
	if next != nil {
		sim.begin(next)
	}
}

func (sim *schedSim) running(stream string) int {
	sim.s.mu.Lock()
	defer sim.s.mu.Unlock()
	if st := sim.s.streams[stream]; st != nil {
		return st.running
	}
	return 0
}

// TestSchedSlowStreamShare: a 500 ms stream beside a 1 ms one, 16 slots.
// Once the slow one is timed, it holds one slot (its share shrunk by how
// much slower it is) and the fast one the other 15, so the fast one keeps
// 15/16 of its rate alone; its read-ahead part is nearly the whole
// read-ahead, the slow one's one entry, and the reader reads them apart.
// Alone (refHold after the fast one last wanted slots), the slow stream
// takes every slot again. With equal shares (before
// the slow-stream rule) it held 8 slots and the fast one ran at half its
// rate alone.
func TestSchedSlowStreamShare(t *testing.T) {
	simTest(t)
	const fast, slow = "fast", "slow"
	const conc = 16
	sim := newSchedSim(conc, conc, map[string]time.Duration{fast: time.Millisecond, slow: 500 * time.Millisecond})
	sim.s.setStreams([]string{fast, slow})
	sim.read(slow, 8)
	sim.read(fast, 32)
	topUp := func() {
		r := sim.s.wanted(false)
		if keys, count, _ := r.hotRead(r.budget); len(keys) > 0 {
			for _, k := range keys {
				sim.read(k, int(count))
			}
		}
		if keys, count, _ := r.slowRead(r.budget); len(keys) > 0 {
			for _, k := range keys {
				sim.read(k, int(count))
			}
		}
		sim.s.endRead()
	}
	var timedAt time.Duration
	slowPeak, fastDone := 0, 0
	for sim.now < 5*time.Second {
		sim.step()
		topUp()
		if timedAt == 0 && sim.done[slow] >= 1 {
			timedAt = sim.now
		}
		// The slow stream's runs that started before it was timed end
		// within its first handler time of being timed.
		if timedAt > 0 && sim.now > timedAt+500*time.Millisecond {
			slowPeak = max(slowPeak, sim.running(slow))
			if fastDone == 0 {
				fastDone = sim.done[fast]
			}
		}
	}
	window := sim.now - (timedAt + 500*time.Millisecond)
	fastRate := float64(sim.done[fast]-fastDone) / window.Seconds()
	alone := conc / time.Millisecond.Seconds()
	t.Logf("slow stream timed at %v; after: slow held at most %d of %d slots, fast ran %.0f records/s (alone %.0f: %.2f)", timedAt, slowPeak, conc, fastRate, alone, fastRate/alone)
	if timedAt == 0 {
		t.Fatal("the slow stream never finished a run")
	}
	if slowPeak > 1 {
		t.Errorf("the 500 ms stream held %d slots beside the 1 ms one once timed; want 1", slowPeak)
	}
	if fastRate < 0.9*alone {
		t.Errorf("fast stream ran %.0f records/s beside the slow one; want at least 0.9 × %.0f", fastRate, alone)
	}

	sim.s.mu.Lock()
	fst, sst := sim.s.streams[fast], sim.s.streams[slow]
	fastCap, slowCap, free := sim.s.bufCap(fst), sim.s.bufCap(sst), sim.s.free
	sim.s.mu.Unlock()
	if !sst.slow || fst.slow {
		t.Errorf("classified slow: fast %v, slow %v; want only the 500 ms stream", fst.slow, sst.slow)
	}
	if slowCap != 1 || fastCap < conc+free-1 {
		t.Errorf("read-ahead parts: fast %d, slow %d (read-ahead %d, %d slots free); want fast ≥ %d, slow 1", fastCap, slowCap, conc, free, conc+free-1)
	}
	r := sim.s.wanted(false)
	sim.s.endRead()
	if len(r.slow) > 0 && r.slowNeed > 1 {
		t.Errorf("the slow stream is read for %d entries at once; want 1", r.slowNeed)
	}

	// The fast stream runs dry: the slow one, alone, takes every slot.
	for sim.running(fast) > 0 || sim.s.queued > sim.s.streams[slow].queued() {
		sim.step()
	}
	sim.s.readDone([]string{fast}, 0, nil) // its read found nothing: not hot
	// It stays the measure of speed for refHold after it last wanted
	// slots (its read may find entries again at once): the slow one
	// does not take the slots meanwhile.
	sim.s.wanted(false)
	sim.s.endRead()
	sim.read(slow, conc)
	if n := sim.running(slow); n > 1 {
		t.Errorf("the fast stream's read found nothing once: the slow one took %d slots at once; want 1 (refHold)", n)
	}
	sim.now += refHold
	sim.s.wanted(false) // the reader's round classifies again
	sim.s.endRead()
	sim.read(slow, conc)
	for sim.running(slow) < conc && len(sim.runs) > 0 {
		sim.step() // a freed slot's next task
		if sim.running(slow) < conc {
			sim.read(slow, 1)
		}
	}
	if n := sim.running(slow); n != conc {
		t.Errorf("alone, the slow stream runs %d handlers; want all %d slots", n, conc)
	}
}

// TestSchedAgedEntryGoesFirst: an entry queued for maxAge starts at the
// next free slot, before a stream with less handler time charged — so an
// entry is not left queued until it is handed back as stale while slots
// turn over (the cause of a flaky TestBreakProbeIgnoresReadAhead: streams
// coming back at the virtual time kept going first).
func TestSchedAgedEntryGoesFirst(t *testing.T) {
	simTest(t)
	for _, aging := range []bool{false, true} {
		var started []string
		s := newScheduler(1, 1, func(t *task) { started = append(started, t.m.Stream) })
		if aging {
			s.maxAge = 100 * time.Millisecond
		}
		s.setStreams([]string{"a", "b"})
		a1, a2 := &task{m: &Message{Stream: "a"}}, &task{m: &Message{Stream: "a"}}
		s.readDone([]string{"a"}, 0, []*task{a1, a2})
		// a1 runs; a2 waits, queued a second ago, its stream charged
		// far ahead of b's.
		s.mu.Lock()
		s.streams["a"].vtime = time.Hour
		a2.queuedAt = time.Now().Add(-time.Second)
		s.mu.Unlock()
		s.readDone([]string{"b"}, 0, []*task{{m: &Message{Stream: "b"}}})
		if len(started) != 1 || started[0] != "a" {
			t.Fatalf("aging %v: started %v before the slot freed; want a's first only", aging, started)
		}
		next, _ := s.finish(a1, time.Millisecond, handled, time.Time{})
		want := "b"
		if aging {
			want = "a"
		}
		if next == nil || next.m.Stream != want {
			t.Errorf("aging %v: the freed slot went to %v; want %q", aging, next, want)
		}
	}
}

// TestSchedSlowerStreamUsesIdleSlots: a 20 ms stream beside a stream whose
// handler takes 10 µs and whose reads bring a couple of entries at a time
// (it needs one or two slots). The 20 ms stream is slow beside it, so its
// own share shrinks, but it borrows the slots the fast one leaves idle:
// most of the 16. (Before the headroom rule a stream could not borrow at
// all while a much faster one wanted slots: it held its share, 8, or with
// a shrunk share 1, and the other slots stayed idle.)
func TestSchedSlowerStreamUsesIdleSlots(t *testing.T) {
	simTest(t)
	const quick, mid = "quick", "mid"
	const conc = 16
	sim := newSchedSim(conc, conc, map[string]time.Duration{quick: 10 * time.Microsecond, mid: 20 * time.Millisecond})
	sim.s.setStreams([]string{quick, mid})
	sim.read(mid, 32)
	sim.read(quick, 2)
	var sum, n int
	var nextQuick time.Duration
	for sim.now < 3*time.Second {
		sim.step()
		sim.s.mu.Lock()
		qq, mq := sim.s.streams[quick].queued(), sim.s.streams[mid].queued()
		sim.s.mu.Unlock()
		if qq == 0 && sim.now >= nextQuick {
			sim.read(quick, 2) // a read round trip: one a millisecond
			nextQuick = sim.now + time.Millisecond
		}
		if mq < conc/2 {
			sim.read(mid, conc)
		}
		sim.s.wanted(false) // the reader's round classifies
		sim.s.endRead()
		if sim.now > time.Second {
			sum += sim.running(mid)
			n++
		}
	}
	sim.s.mu.Lock()
	slow := sim.s.streams[mid].slow
	sim.s.mu.Unlock()
	avg := float64(sum) / float64(n)
	t.Logf("the 20 ms stream ran %.1f handlers on average (of %d; classified slow: %v); the 10 µs stream handled %d entries", avg, conc, slow, sim.done[quick])
	if avg < 12 {
		t.Errorf("the 20 ms stream ran %.1f handlers on average beside a stream that needs one or two; want at least 12 of %d", avg, conc)
	}
}

// checkIndex compares runList and idleWant with the streams they index
// (under s.mu); "" if they agree.
func (s *scheduler) checkIndex(now time.Time) string {
	runs, idle, full := 0, 0, 0
	var occ int64
	for _, st := range s.streams {
		if st.running > 0 {
			runs++
			if st.rIdx < 0 || st.rIdx >= len(s.runList) || s.runList[st.rIdx] != st {
				return fmt.Sprintf("%s runs %d handlers, not in runList", st.key, st.running)
			}
		} else if st.rIdx >= 0 {
			return fmt.Sprintf("%s runs none, in runList", st.key)
		}
		want := st.running == 0 && st.queued() == 0 && s.wantsSlots(st, now)
		if want != (st.wIdx >= 0) {
			return fmt.Sprintf("%s: idle and wanting slots %v, in idleWant %v", st.key, want, st.wIdx >= 0)
		}
		if want {
			idle++
			occ += st.wOcc
			full += fullCount(st)
			if m := s.idleWant.members[st.wBucket]; st.wIdx >= len(m) || m[st.wIdx] != st || st.wBucket != wantBucket(st.avg) || st.wFull != st.full {
				return fmt.Sprintf("%s: misplaced in idleWant", st.key)
			}
		}
	}
	if runs != len(s.runList) || idle != s.idleWant.n {
		return fmt.Sprintf("runList %d (want %d), idleWant %d (want %d)", len(s.runList), runs, s.idleWant.n, idle)
	}
	if idle > 0 {
		if n, f, o := s.idleWant.prefix(wantBuckets); n != idle || f != full || o != occ {
			return fmt.Sprintf("idleWant sums %d, %d full, %d; members %d, %d full, %d", n, f, o, idle, full, occ)
		}
	}
	return ""
}

// TestSchedStaleTakesParked: when a stream's queued entries wait a
// visibility timeout (its handlers hang), the reclaimed entries it parked
// behind them are handed back too — they waited longer still — not one
// visibility timeout each.
func TestSchedStaleTakesParked(t *testing.T) {
	simTest(t)
	sim := newSchedSim(2, 2, map[string]time.Duration{"a": time.Hour})
	sim.s.setStreams([]string{"a"})
	sim.read("a", 2) // both slots busy for an hour: the handlers hang
	ts := make([]*task, 10)
	for i := range ts {
		ts[i] = &task{m: &Message{Stream: "a", ID: fmt.Sprint("r", i)}}
	}
	if refused := sim.s.pushUrgent(ts); len(refused) > 0 {
		t.Fatalf("refused %d", len(refused))
	}
	queued, _, _, parked := sim.s.counts()
	if parked == 0 || queued != 10 {
		t.Fatalf("queued %d (parked %d): want the 10 reclaimed entries held, some parked", queued, parked)
	}
	sim.now += time.Minute
	stale := sim.s.takeStale(sim.s.clock().Add(-30 * time.Second))
	if len(stale) != 10 {
		t.Errorf("handed back %d of the 10 entries that waited a minute; want all (queued and parked)", len(stale))
	}
	if queued, _, _, parked := sim.s.counts(); queued != 0 || parked != 0 {
		t.Errorf("after the hand-back: queued %d, parked %d", queued, parked)
	}
}
