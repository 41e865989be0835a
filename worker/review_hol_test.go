package worker

// Review of the slow-stream share / lender / aging change (review-hol).
// Most tests drive the scheduler on a simulated clock (schedSim) with a
// model of fetch.go's read loop (holRig): each XREADGROUP takes rtt of
// simulated time, an empty read of a hot stream makes it not hot, the
// reader waits for a kick (space) or the probe timer when nothing was read,
// and a blocking read when nothing is hot.

import (
	"cmp"
	"fmt"
	"slices"
	"testing"
	"time"
)

type holRig struct {
	sim     *schedSim
	rtt     time.Duration
	backlog map[string]int     // entries in Redis at time 0
	rate    map[string]float64 // entries appended per second
	readN   map[string]int     // entries read so far

	noSlowRule bool // undo classify after every wanted (the rule before the change)

	// reader
	state     int // 0: busy until at; 1: waits for a kick or at; 2: blocking read until an arrival or at
	at        time.Duration
	nextProbe time.Duration
	uncovered bool

	// measures
	busy      time.Duration // integral of running handlers over time
	idleWork  time.Duration // integral of free slots while some stream had queued entries
	maxQueued int
	invErr    string
	reads     map[string]int // XREADGROUPs naming the stream
}

func newHolRig(conc, readAhead int, dur map[string]time.Duration) *holRig {
	return &holRig{
		sim:     newSchedSim(conc, readAhead, dur),
		rtt:     200 * time.Microsecond,
		backlog: map[string]int{},
		rate:    map[string]float64{},
		readN:   map[string]int{},
		reads:   map[string]int{},
	}
}

func (r *holRig) produced(k string, at time.Duration) int {
	return r.backlog[k] + int(r.rate[k]*at.Seconds())
}

func (r *holRig) avail(k string) int { return r.produced(k, r.sim.now) - r.readN[k] }

// nextArrival is when the next entry of any stream is appended (-1: never).
func (r *holRig) nextArrival() time.Duration {
	best := time.Duration(-1)
	for k, rt := range r.rate {
		if rt <= 0 {
			continue
		}
		n := r.readN[k] - r.backlog[k] + 1 // the entry not read yet
		if r.avail(k) > 0 {
			return r.sim.now
		}
		at := time.Duration(float64(n) / rt * float64(time.Second))
		if best < 0 || at < best {
			best = at
		}
	}
	return best
}

// xread reads keys with COUNT count and queues what it returns (queueRead:
// a probe's COUNT says nothing of what a stream has).
func (r *holRig) xread(keys []string, count int, probe bool) int {
	var ts []*task
	for _, k := range keys {
		r.reads[k]++
		n := min(count, r.avail(k))
		r.readN[k] += n
		for range n {
			ts = append(ts, &task{m: &Message{Stream: k}})
		}
	}
	if probe {
		count = 0
	}
	r.sim.s.readDone(keys, count, ts)
	return len(ts)
}

func (r *holRig) wanted(probe bool) readRequest {
	req := r.sim.s.wanted(probe)
	if r.noSlowRule {
		s := r.sim.s
		s.mu.Lock()
		for c := range s.contenders {
			c.slow = false
		}
		s.slowN, s.fastAvg = 0, -1
		if len(req.slow) > 0 {
			// one list, least recently read first, as before the change
			req.hot = append(req.hot, req.slow...)
			slices.SortFunc(req.hot, func(a, b string) int { return cmp.Compare(s.streams[a].rr, s.streams[b].rr) })
			req.need = max(req.need, req.slowNeed)
			req.slow = nil
		}
		s.mu.Unlock()
	}
	return req
}

// round is one turn of readLoop.
func (r *holRig) round() {
	s := r.sim.s
	now := r.sim.now
	probe := now >= r.nextProbe || !s.anyHot()
	req := r.wanted(probe)
	if req.empty() {
		r.state, r.at = 1, now+probeInterval
		return
	}
	budget, got, more, ops := req.budget, 0, false, 0
	probeIdle := func() {
		if len(req.idle) == 0 {
			return
		}
		r.nextProbe = now + probeInterval
		n := 0
		if budget > 0 {
			ops++
			var probed []string
			left := budget
			for _, k := range req.idle {
				if left <= 0 {
					break
				}
				probed = append(probed, k)
				if r.avail(k) > 0 {
					left--
				}
			}
			n = len(probed)
			m := r.xread(probed, 1, true)
			got += m
			budget -= m
		}
		if r.uncovered = n < len(req.idle) && budget <= 0; r.uncovered {
			r.nextProbe = 0
		}
	}
	probeFirst := probe && r.uncovered
	if probeFirst {
		probeIdle()
	}
	for _, part := range req.parts() { // as readLoop
		keys, count, m := part(budget)
		more = more || m
		if len(keys) > 0 {
			ops++
			n := r.xread(keys, int(count), false)
			got += n
			budget -= n
		}
	}
	if probe && !probeFirst {
		probeIdle()
	}
	s.endRead()
	switch {
	case got > 0 || more:
		r.state, r.at = 0, now+time.Duration(max(ops, 1))*r.rtt
	case s.anyHot() || r.uncovered:
		r.state, r.at = 1, max(r.nextProbe, now+time.Millisecond)
	case probe:
		r.state, r.at = 2, now+time.Second
	default:
		r.state, r.at = 0, now+r.rtt
	}
}

func (r *holRig) kicked() bool {
	select {
	case <-r.sim.s.space:
		return true
	default:
		return false
	}
}

func (r *holRig) check() {
	s := r.sim.s
	s.mu.Lock()
	defer s.mu.Unlock()
	r.maxQueued = max(r.maxQueued, s.queued)
	n := 0
	for c := range s.contenders {
		if c.slow {
			n++
		}
	}
	for _, st := range s.streams {
		if st.slow && !st.contender && r.invErr == "" {
			r.invErr = fmt.Sprintf("t=%v: %s slow but not a contender", r.sim.now, st.key)
		}
	}
	if msg := s.checkIndex(s.clock()); msg != "" && r.invErr == "" {
		r.invErr = fmt.Sprintf("t=%v: %s", r.sim.now, msg)
	}
	if (s.slowN != n || s.slowN < 0 || s.slowN > len(s.contenders)) && r.invErr == "" {
		r.invErr = fmt.Sprintf("t=%v: slowN %d, slow contenders %d, contenders %d", r.sim.now, s.slowN, n, len(s.contenders))
	}
}

// run drives the rig until simulated time end.
func (r *holRig) run(end time.Duration) {
	sim := r.sim
	s := sim.s
	for {
		rat := r.at
		if r.state == 2 {
			if a := r.nextArrival(); a >= 0 && a < rat {
				rat = max(a, sim.now)
			}
		}
		next, isRun := rat, false
		if len(sim.runs) > 0 && sim.runs[0].end <= rat {
			next, isRun = sim.runs[0].end, true
		}
		next = max(next, sim.now)
		last := next > end
		if last {
			next = end
		}
		dt := next - sim.now
		s.mu.Lock()
		r.busy += time.Duration(s.running) * dt
		if s.queuedStartable(time.Now()) > 0 {
			r.idleWork += time.Duration(s.free) * dt
		}
		s.mu.Unlock()
		sim.now = next
		if last {
			return
		}
		if isRun {
			sim.step()
		} else {
			r.round()
		}
		if r.state == 1 && r.kicked() {
			r.state, r.at = 0, sim.now+r.rtt/10
		}
		r.check()
	}
}

func (r *holRig) rate1(stream string, over time.Duration) float64 {
	return float64(r.sim.done[stream]) / over.Seconds()
}

func (r *holRig) meanBusy(over time.Duration) float64 { return float64(r.busy) / float64(over) }

func (r *holRig) meanIdleWithWork(over time.Duration) float64 {
	return float64(r.idleWork) / float64(over)
}

type holStream struct {
	name    string
	dur     time.Duration
	backlog int
	rate    float64
}

type holResult struct {
	done       map[string]int
	busy, idle float64
	maxQueued  int
	invErr     string
	reads      map[string]int
}

func runHol(conc, readAhead int, streams []holStream, end time.Duration, noSlowRule bool) holResult {
	dur := map[string]time.Duration{}
	var keys []string
	for _, st := range streams {
		dur[st.name] = st.dur
		keys = append(keys, st.name)
	}
	r := newHolRig(conc, readAhead, dur)
	r.noSlowRule = noSlowRule
	for _, st := range streams {
		r.backlog[st.name], r.rate[st.name] = st.backlog, st.rate
	}
	r.sim.s.setStreams(keys)
	r.kicked()
	r.run(end)
	return holResult{done: r.sim.done, busy: r.meanBusy(end), idle: r.meanIdleWithWork(end), maxQueued: r.maxQueued, invErr: r.invErr, reads: r.reads}
}

func (h holResult) String() string {
	return fmt.Sprintf("done %v, mean busy slots %.1f, mean free slots while entries queued %.1f, max queued %d", h.done, h.busy, h.idle, h.maxQueued)
}

const holMs = time.Millisecond

// compareHol runs streams with the change and with its slow-stream rule
// undone (one hot list, equal shares), logs both, returns both.
func compareHol(t *testing.T, conc, readAhead int, streams []holStream, end time.Duration) (now, before holResult) {
	t.Helper()
	now = runHol(conc, readAhead, streams, end, false)
	before = runHol(conc, readAhead, streams, end, true)
	t.Logf("with the change: %v", now)
	t.Logf("slow rule undone: %v", before)
	for _, r := range []holResult{now, before} {
		if r.invErr != "" {
			t.Errorf("scheduler invariant: %s", r.invErr)
		}
		if r.maxQueued > conc+readAhead {
			t.Errorf("queued %d > concurrency + read-ahead %d", r.maxQueued, conc+readAhead)
		}
	}
	return now, before
}

// TestReviewHolSlowStreamNotRead: with a small read budget (concurrency 1
// or 2, read-ahead 0..2) the hot (fast) streams are read first and take the
// whole budget every round; the slow streams' own XREADGROUP (slowRead) gets
// what is left, nothing, so a 10 ms stream beside a 1 ms one is read once
// in 5 s. Before, the two were in one list, least recently read first.
func TestReviewHolSlowStreamNotRead(t *testing.T) {
	simTest(t)
	for _, c := range []struct {
		conc, ra int
		streams  []holStream
	}{
		{1, 0, []holStream{{"m1", holMs, 100000, 0}, {"m10", 10 * holMs, 100000, 0}}},
		{2, 2, []holStream{{"a1", holMs, 100000, 0}, {"b1", holMs, 100000, 0}, {"m10", 10 * holMs, 100000, 0}}},
		{2, 2, []holStream{{"m1", holMs, 100000, 0}, {"m5", 5 * holMs, 100000, 0}, {"m20", 20 * holMs, 100000, 0}, {"m100", 100 * holMs, 100000, 0}}},
	} {
		t.Run(fmt.Sprintf("conc%d-ra%d-%d", c.conc, c.ra, len(c.streams)), func(t *testing.T) {
			now, before := compareHol(t, c.conc, c.ra, c.streams, 5*time.Second)
			for _, st := range c.streams {
				if now.done[st.name] < 10 {
					t.Errorf("%s (%v handlers, backlog) ran %d times in 5 s (%d with the slow rule undone); it is starved", st.name, st.dur, now.done[st.name], before.done[st.name])
				}
			}
		})
	}
}

// TestReviewHolSlowShareIdlesSlots: a 1 ms stream that is not slot-bound
// (5,000 records/s: 5 slots) beside a 50 ms stream with a backlog, 16
// slots. The fast one is hot all the time, so the slow one could not borrow
// (lender) and its share was shrunk to 1: ~9 slots stayed free while it had
// entries queued, and it ran 5x slower than with equal shares — for no
// gain of the fast one (it keeps up either way). Fixed by the head-room
// rule (the slow one borrows what the fast one leaves idle).
func TestReviewHolSlowShareIdlesSlots(t *testing.T) {
	simTest(t)
	now, before := compareHol(t, 16, 16, []holStream{{"fast", holMs, 0, 5000}, {"slow", 50 * holMs, 100000, 0}}, 5*time.Second)
	if now.done["fast"] < before.done["fast"]-100 {
		t.Logf("the fast stream gained nothing either")
	}
	// Lead's note (after the head-room rule): the slow stream may borrow
	// what the fast one leaves idle beyond its head-room, 1.5 × the 5
	// slots it keeps busy + 1 = 9 of 16: about 4 slots stay free for the
	// fast one's bursts, by design; the slow one keeps most of its rate.
	if now.idle > 4.5 || float64(now.done["slow"]) < 0.75*float64(before.done["slow"]) {
		t.Errorf("slow stream: %d records in 5 s (%d with equal shares); %.1f slots free on average while entries were queued (%.1f with equal shares)",
			now.done["slow"], before.done["slow"], now.idle, before.idle)
	}
}

// TestReviewHolCheapStreamShrinksOthers: a stream whose handler is nearly
// free (50 µs: a filter, or a failing call) makes every stream over
// 4 × 50 µs + 1 ms "slow": three ordinary 5 ms partitions with backlogs get
// one slot each of 16 and lose ~3/4 of their rate, 12 slots free.
func TestReviewHolCheapStreamShrinksOthers(t *testing.T) {
	simTest(t)
	now, before := compareHol(t, 16, 16, []holStream{{"quick", 50 * time.Microsecond, 0, 10000}, {"a", 5 * holMs, 100000, 0}, {"b", 5 * holMs, 100000, 0}, {"c", 5 * holMs, 100000, 0}}, 5*time.Second)
	got, was := now.done["a"]+now.done["b"]+now.done["c"], before.done["a"]+before.done["b"]+before.done["c"]
	if now.idle > 3 || float64(got) < 0.5*float64(was) {
		t.Errorf("the 5 ms streams: %d records in 5 s (%d with equal shares); %.1f slots free on average while entries were queued (%.1f)", got, was, now.idle, before.idle)
	}
}

// TestReviewHolInvariants: slowN matches the slow contenders, no
// non-contender is slow, queued stays within concurrency + read-ahead,
// and every stream with a backlog progresses, over mixed handler times
// (0, 1, 5, 20, 100 ms), a fast stream leaving, and a stream alternating
// between 1 ms and 100 ms. (Held.)
func TestReviewHolInvariants(t *testing.T) {
	simTest(t)
	mixed := []holStream{{"m0", 0, 100000, 0}, {"m1", holMs, 100000, 0}, {"m5", 5 * holMs, 100000, 0}, {"m20", 20 * holMs, 100000, 0}, {"m100", 100 * holMs, 100000, 0}}
	for _, c := range [][2]int{{4, 4}, {16, 0}, {16, 16}, {64, 16}} {
		res := runHol(c[0], c[1], mixed, 5*time.Second, false)
		t.Logf("conc %d ra %d: %v", c[0], c[1], res)
		if res.invErr != "" || res.maxQueued > c[0]+c[1] {
			t.Errorf("conc %d ra %d: invariant %q, max queued %d", c[0], c[1], res.invErr, res.maxQueued)
		}
	}
	// the fast stream runs dry (small backlog); a stream alternates speed
	r := newHolRig(16, 16, map[string]time.Duration{"fast": holMs, "slow": 100 * holMs, "alt": holMs})
	r.backlog["fast"], r.backlog["slow"], r.backlog["alt"] = 3000, 100000, 100000
	r.sim.s.setStreams([]string{"fast", "slow", "alt"})
	r.kicked()
	for i := range 20 {
		if i%2 == 0 {
			r.sim.dur["alt"] = 100 * holMs
		} else {
			r.sim.dur["alt"] = holMs
		}
		r.run(r.sim.now + 250*holMs)
	}
	t.Logf("fast leaves, alt alternates: done %v, busy %.1f", r.sim.done, r.meanBusy(r.sim.now))
	if r.invErr != "" || r.sim.done["slow"] < 100 || r.maxQueued > 32 {
		t.Errorf("invariant %q, slow done %d, max queued %d", r.invErr, r.sim.done["slow"], r.maxQueued)
	}
}

// TestReviewHolAgedEntryBehindUrgent: the aging rule picks the stream whose
// head was queued longest, but pick then starts the stream's urgent task
// (reclaimed, or a due retry) — not the aged one. With urgent tasks coming
// (a poison entry retried, reclaims), the aged entry keeps waiting until
// takeStale hands it back.
func TestReviewHolAgedEntryBehindUrgent(t *testing.T) {
	simTest(t)
	var started []*task
	s := newScheduler(1, 1, func(t *task) { started = append(started, t) })
	s.maxAge = 100 * time.Millisecond
	s.setStreams([]string{"a", "b"})
	first, aged := &task{m: &Message{Stream: "a", ID: "first"}}, &task{m: &Message{Stream: "a", ID: "aged"}}
	s.readDone([]string{"a"}, 0, []*task{first, aged})
	s.mu.Lock()
	aged.queuedAt = time.Now().Add(-time.Second)
	s.mu.Unlock()
	s.readDone([]string{"b"}, 0, []*task{{m: &Message{Stream: "b", ID: "b"}}})
	cur := first
	var ran []string
	for i := range 5 {
		s.pushUrgent([]*task{{m: &Message{Stream: "a", ID: fmt.Sprint("urgent", i)}}})
		next, _ := s.finish(cur, time.Millisecond, handled, time.Time{})
		if next == nil {
			break
		}
		ran = append(ran, next.m.ID)
		if next == aged {
			break
		}
		cur = next
	}
	t.Logf("started after the aged entry was due: %v", ran)
	if len(ran) == 0 || ran[0] != "aged" {
		t.Errorf("the entry queued 1 s (maxAge 100 ms) did not start next: %v", ran)
	}
}
