package worker

import (
	"cmp"
	"container/heap"
	"math"
	"slices"
	"sync"
	"time"
)

// The scheduler decides which entry runs in which handler slot. Everything
// the worker holds (is pending under its consumer) and has not settled is a
// task in exactly one place: a stream's queue (read or reclaimed, not
// started), a handler slot (running), or the timer heap (waiting for a
// retry, its slot given back). All of them stay leased (Worker.held).
//
// Fairness is by handler time. The streams that want slots (contenders:
// entries queued or running, or the last read found entries) share the
// Concurrency slots: each may run share = ceil(Concurrency / contenders)
// handlers while another contender that has work runs fewer than its share.
// A slow stream — its handlers take more than slowRatio times as long as
// the fastest contender's — has a share shrunk by that ratio, at least one
// slot (shareOf): a 500 ms partition beside a 1 ms one runs 1 handler of
// 16, and the 1 ms one the other 15; alone, it takes every slot. A stream
// may go over its share when no other stream under its
// own share has entries queued (work conservation: the slot would stay
// idle), leaving free the head-room of the streams that want slots and
// whose handlers are much faster than its — every free slot while one of
// them has more entries than its last read took (see lender). When a
// slot frees, it goes to the stream with the least handler time charged
// (its virtual time), among those under their share first. A stream that
// gets entries again starts at the scheduler's virtual time (the least
// charge of the streams with entries), so a quiet stream gets no burst; one
// that becomes a contender again also starts at most one handler time
// ahead of it, so a stream that ran alone for a while is not starved when it
// comes back (see lift and join). Within a stream, reclaimed entries and
// due retries go before entries read since. An entry queued for maxAge
// (half the visibility timeout) in a stream under its share starts next,
// whatever the handler time charged: entries are not left to go stale
// (takeStale) while slots turn over.
//
// Retries wait in a timer heap, not in a slot: a failing partition holds no
// slots during its backoff. A RetryError (the downstream asked to back off)
// pauses its stream: nothing of it starts and nothing new is read for it
// until the wait is over. A stream reads no new entries while maxWaiting of
// its entries wait for a retry, so a failing partition holds a bounded
// number of entries.
//
// The read-ahead is bounded: the reader asks for entries for the free slots
// and for at most ReadAhead more, queued, each stream up to its part
// (ceil((ReadAhead + free slots) / contenders); a slow stream's part covers
// slowHorizon of its handler time, one entry for a 500 ms handler, and the
// others share the rest: bufCap) and topped up when half of it is left, so
// that a freed slot finds its next entry without a round trip to Redis. The entries a read or a reclaim round on the way may bring are
// reserved (reading, reclaiming), so that the two together stay within
// ReadAhead + Concurrency queued. A paused stream's queue does not count:
// it waits for the end of the pause, holding no slot. When a slot frees
// with nothing to run, the reader is woken at once.
type scheduler struct {
	conc, readAhead, maxWaiting int
	start                       func(t *task)    // runs t in a new slot goroutine
	maxAge                      time.Duration    // a task queued this long goes first (0: never)
	clock                       func() time.Time // time.Now; a simulated clock in tests (the retry timer stays real)

	mu         sync.Mutex
	free       int // free handler slots
	streams    map[string]*sstream
	readyList  []*sstream // streams with queued tasks
	contenders map[*sstream]struct{}
	hotSet     map[*sstream]struct{} // listed streams that are hot
	queued     int                   // tasks in stream queues
	reading    int                   // entries the read in flight may still bring (reserved by wanted)
	reclaiming int                   // entries the reclaim round in flight may bring (reserved by reclaimBudget)
	vnow       time.Duration         // virtual time: the least charge of a stream with entries to start, at the last pick (see lift)
	waiting    int                   // tasks in the timer heap
	running    int
	timers     taskHeap
	timer      *time.Timer
	timerAt    time.Time
	stopped    bool
	space      chan struct{} // a stream may want entries: wakes the reader
	rr         uint64        // reads done (read rotation)
	finished   uint64        // attempts finished
	fastAvg    time.Duration // the least handler time of a timed contender that wants slots, at the last classify (-1: none)
	ref        *sstream      // the stream fastAvg is of
	slowN      int           // contenders classified slow
	runList    []*sstream    // streams running handlers (see sched_index.go)
	idleWant   wantIndex     // streams that want slots, run none and have none queued
	candBuf    []*sstream    // lender's candidates (reused)
	parked     int           // tasks parked (sstream.parked): held, not in queued
	reclaimQ   int           // reclaimed tasks queued (in urgent), not started: sstream.reclaimQ summed
	claimEvery time.Duration // the reclaim interval: how long claimed entries must last (claimCap)
}

// lendSlack: a stream over its share may take a slot while another stream
// wants slots if its handlers take at most twice as long as the other's,
// plus lendSlack.
const lendSlack = time.Millisecond

// A contender is slow while its handlers take more than slowRatio times as
// long as those of the fastest contender that wants slots, plus slowSlack.
// A slow stream's share of the slots and of the read-ahead shrinks with the
// ratio (shareOf, bufCap): it holds slots for so long that an equal number
// of them would cost the fast ones most of their rate. Its read-ahead
// covers about slowHorizon of its handler time.
const (
	slowRatio   = 4
	slowSlack   = time.Millisecond
	slowFloor   = time.Millisecond // the reference is taken as at least this: beside a 50 µs filter, 2 ms handlers are not slow
	slowHorizon = 20 * time.Millisecond
	refHold     = time.Second
)

// occWindow is the window over which a stream's slot occupancy (the mean
// number of its handlers running: Little's L) is measured.
const occWindow = 500 * time.Millisecond

// task is one held entry on its way through the scheduler.
type task struct {
	m  *Message
	st *sstream
	he *heldEntry

	charged        time.Duration // the handler time its stream was charged when it started
	redeliver      bool          // a retry after a failure: count the delivery before running
	reclaimed      bool          // taken from another consumer (pushUrgent), not started yet
	dueRetry       bool          // a retry come due, queued (counted in its stream's retryQ)
	backoffs       int64         // RetryError back-offs so far
	runs           int64         // handler starts of the entry known here (start.lua's record, or 1 for a first delivery), this one included
	transientSince time.Time     // first RetryError

	queuedAt  time.Time // when it entered its stream's queue
	claimedAt time.Time // reclaimed: when pushUrgent took it; unpark leaves it (see takeStale)
	due       time.Time // in the timer heap: when it is due
	wake      bool      // a heap entry that only ends st's pause
	idx       int       // index in the heap
}

// sstream is the scheduler's state of one stream.
type sstream struct {
	key        string
	ready      []*task // read, not started
	urgent     []*task // reclaimed or due for a retry: before ready
	parked     []*task // reclaimed, beyond what it starts at once: queued into urgent as it drains (unpark)
	reclaimQ   int     // reclaimed tasks in urgent, not started (with parked: what claimRoom counts)
	running    int
	waiting    int           // tasks in the timer heap
	retryQ     int           // retries come due, queued, not started (see failing)
	vtime      time.Duration // handler time charged
	avg        time.Duration // moving average of the handler time: charged at start
	timed      bool          // avg has a sample
	pauseUntil time.Time     // a RetryError: nothing starts or is read before
	hot        bool          // the last read of this stream returned entries
	full       bool          // a read returned its whole COUNT, at least what the stream was owed: more entries than it may start wait in Redis (see mayBorrow, readDone)
	got        int           // entries the read readDone queues returned (scratch)
	listed     bool          // in the last discovery
	contender  bool
	inReady    bool
	rr         uint64    // read rotation: when it was last read
	streak     int64     // consecutive back-offs (RetryError), reset by a success
	slow       bool      // classified slow at the last classify
	wantedAt   time.Time // when classify last saw it want slots
	fails      float64   // moving average of its attempts that ended in a retry (1) or handled (0)
	rIdx       int       // index in runList (-1: not in it)
	wIdx       int       // index in its idleWant bucket (-1: not in it)
	wBucket    int
	wOcc       int64         // the occupancy it added to idleWant
	wFull      bool          // the full flag it had when it joined idleWant
	turnedAt   time.Time     // its last attempt finished, or its first handler started after none ran (see claimCap)
	longest    time.Duration // its longest attempt lately: the longest since longestAt, halved each maxAge (see claimCap)
	longestAt  time.Time
	dIdx       int // index in idleWant's window heap (-1: not in it)

	// Slot occupancy: busy is the integral of running over time since
	// occAt; occ the mean running over the last whole occWindow.
	busy       time.Duration
	lastChange time.Time
	occAt      time.Time
	occ        float64
}

// account brings st's occupancy integral up to now; call it before
// st.running changes (under s.mu).
func (st *sstream) account(now time.Time) {
	if !st.lastChange.IsZero() {
		st.busy += time.Duration(st.running) * now.Sub(st.lastChange)
	}
	st.lastChange = now
	if st.occAt.IsZero() {
		st.occAt = now
	} else if w := now.Sub(st.occAt); w >= occWindow {
		st.occ = float64(st.busy) / float64(w)
		st.busy, st.occAt = 0, now
	}
}

func (st *sstream) queued() int { return len(st.ready) + len(st.urgent) }

func (st *sstream) paused(now time.Time) bool { return now.Before(st.pauseUntil) }

func newScheduler(conc, readAhead int, start func(*task)) *scheduler {
	return &scheduler{
		conc:       conc,
		readAhead:  readAhead,
		maxWaiting: conc,
		start:      start,
		free:       conc,
		streams:    map[string]*sstream{},
		contenders: map[*sstream]struct{}{},
		hotSet:     map[*sstream]struct{}{},
		space:      make(chan struct{}, 1),
		fastAvg:    -1,
		clock:      time.Now,
	}
}

// kick wakes the reader.
func (s *scheduler) kick() {
	select {
	case s.space <- struct{}{}:
	default:
	}
}

func (s *scheduler) stream(key string) *sstream {
	st := s.streams[key]
	if st == nil {
		st = &sstream{key: key, rIdx: -1, wIdx: -1, dIdx: -1}
		s.streams[key] = st
	}
	return st
}

// share is how many slots a contender may hold while another waits.
func (s *scheduler) share() int {
	n := max(len(s.contenders), 1)
	return (s.conc + n - 1) / n
}

// shareOf is st's share of the slots while another contender waits: share,
// and for a slow stream share shrunk by how much longer its handlers take
// than the fastest contender's (at least one slot). A 500 ms stream beside
// a 1 ms one holds one slot of 16, not 8: eight would cost the fast one
// half its rate, for a handful of records a second more.
func (s *scheduler) shareOf(st *sstream, share int) int {
	if !st.slow || s.fastAvg < 0 || st.avg <= 0 {
		return share
	}
	return max(1, int(int64(share)*int64(slowRatio*s.fastAvg+slowSlack)/int64(st.avg)))
}

// bufCap is how many tasks st may have queued, or be read for: its part of
// the read-ahead and of the free slots. A slow stream's part covers about
// slowHorizon of its handler time (at least one entry); the others share
// what the slow ones leave.
func (s *scheduler) bufCap(st *sstream) int {
	n := max(len(s.contenders), 1)
	room := s.readAhead + s.free
	if st.slow && st.avg > 0 {
		r := max((room+n-1)/n, 1)
		return max(1, min(r, int((int64(r)*int64(slowHorizon)+int64(st.avg)-1)/int64(st.avg))))
	}
	if f := n - s.slowN; s.slowN > 0 && f > 0 {
		// The slow streams' parts come out of the read-ahead only: at
		// their share, they start in no free slot (the free slots are
		// the head-room of the faster streams, see lender), and their
		// next entries are queued outside the read budget (queuedCapped).
		// Taking them out of the free slots too left a 1 ms stream beside
		// four 2 s ones, with read-ahead 0, one entry a read: it ran 4-5
		// handlers of its 12 slots, one read round trip apart.
		return max((max(s.readAhead-s.slowN, 0)+s.free+f-1)/f, 1)
	}
	return max((room+n-1)/n, 1)
}

// classify marks the contenders whose handlers are slow beside the fastest
// one that wants slots (under s.mu). It costs O(contenders): it runs once a
// read round (wanted) and when a stream gets its first timing, not at every
// handler's end; between two runs, a stream's standing is that of the last.
func (s *scheduler) classify(now time.Time) {
	fast := time.Duration(-1)
	var ref *sstream
	for c := range s.contenders {
		if c.timed && !c.failing() && s.wantsSlots(c, now) {
			c.wantedAt = now
			if fast < 0 || c.avg < fast {
				fast, ref = c.avg, c
			}
		}
	}
	// The reference stays for refHold after it last wanted slots: a fast
	// stream whose read found nothing for a moment (its producer, or the
	// ingest, a little behind) would otherwise hand a slow one its full
	// share and read-ahead, slots it holds for a whole handler time.
	if p := s.ref; p != nil && p != ref && s.recentRef(now) && (fast < 0 || p.avg < fast) {
		fast, ref = p.avg, p
	}
	s.ref = ref
	if fast >= 0 {
		fast = max(fast, slowFloor)
	}
	s.fastAvg, s.slowN = fast, 0
	for c := range s.contenders {
		c.slow = fast >= 0 && c.timed && c.avg > slowRatio*fast+slowSlack
		if c.slow {
			s.slowN++
		}
	}
}

// failing reports whether st mostly fails: some of its entries wait for a
// retry, or came due and wait in its queue (fire moves them there all at
// once: counting only the timer heap made a failing stream the speed
// reference whenever its retries came due), and most of its recent
// attempts ended in one. Such a stream is no
// measure of speed (its handler fails, often fast: a 1 ms failure beside
// 50 ms handlers would shrink their share to a slot). One entry waiting
// for a retry in a stream that handles the rest leaves it the measure: it
// took a 1 ms stream out of the reference for the whole backoff, and the
// 500 ms stream beside it got 8 of 16 slots back (the 1 ms one fell to
// 0.69 of its rate).
func (st *sstream) failing() bool { return (st.waiting > 0 || st.retryQ > 0) && st.fails >= 0.5 }

// recentRef reports whether the speed reference wanted slots within refHold,
// is still a stream of the scheduler and is not failing (a stream that
// fails again after it was taken as the reference is no measure of speed
// any more) (under s.mu).
func (s *scheduler) recentRef(now time.Time) bool {
	p := s.ref
	return p != nil && p.timed && !p.failing() && now.Sub(p.wantedAt) < refHold && s.streams[p.key] == p
}

// wantsSlots reports whether st has entries to start now or soon: queued
// or parked, or the last read found some (and it may be read), and it is
// not paused.
func (s *scheduler) wantsSlots(st *sstream, now time.Time) bool {
	return !st.paused(now) && (st.queued() > 0 || len(st.parked) > 0 || (st.hot && st.listed && st.waiting < s.maxWaiting))
}

// update recomputes st's standing after a change (under s.mu).
func (s *scheduler) update(st *sstream, now time.Time) {
	if st.hot && st.listed {
		s.hotSet[st] = struct{}{}
	} else {
		delete(s.hotSet, st)
	}
	c := st.running > 0 || s.wantsSlots(st, now)
	if c != st.contender {
		st.contender = c
		if c {
			s.join(st)
			s.contenders[st] = struct{}{}
		} else {
			delete(s.contenders, st)
			if st.slow {
				st.slow = false
				s.slowN--
			}
		}
	}
	if q := st.queued() > 0; q != st.inReady {
		st.inReady = q
		if q {
			s.lift(st)
			s.readyList = append(s.readyList, st)
		} else {
			for i, o := range s.readyList {
				if o == st {
					s.readyList[i] = s.readyList[len(s.readyList)-1]
					s.readyList = s.readyList[:len(s.readyList)-1]
					break
				}
			}
		}
	}
	s.reindex(st, now)
	if !st.listed && !st.contender && st.queued() == 0 && len(st.parked) == 0 && st.waiting == 0 && st.running == 0 {
		delete(s.streams, st.key)
		delete(s.hotSet, st)
	}
}

// The virtual time (vnow) is the least handler time charged to a stream
// that had entries to start, at the last pick: no stream that competes
// for slots is behind it. A stream that gets entries to start again (its
// queue was empty) is brought up to it (lift): it gets no credit for the
// time it had nothing to run, or a stream that ran alone for a while and
// one that was idle would keep the difference, and whichever had the lower
// charge would take the slots until the other's was matched.
func (s *scheduler) lift(st *sstream) {
	if st.vtime < s.vnow {
		st.vtime = s.vnow
	}
}

// join is lift for a stream that becomes a contender: it also forgets a
// lead it kept from earlier (handler time it was charged beyond the others
// by running more than its share while they did not want the slots, or
// alone): it starts at most one of its handler times ahead of the virtual
// time, so that a stream coming back after a pause is not starved until
// every other has been charged as much as it ran before.
func (s *scheduler) join(st *sstream) {
	s.lift(st)
	if lead := s.vnow + st.avg; st.vtime > lead {
		st.vtime = lead
	}
}

// setStreams takes the streams of a discovery. New ones are probed at the
// reader's next round; streams that went away are read no more, and
// forgotten once nothing of them is held.
func (s *scheduler) setStreams(keys []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock()
	in := make(map[string]bool, len(keys))
	for _, k := range keys {
		in[k] = true
		st := s.stream(k)
		if !st.listed {
			st.listed = true
			s.update(st, now)
		}
	}
	for k, st := range s.streams {
		if !in[k] && st.listed {
			st.listed = false
			s.update(st, now)
		}
	}
	// A stream that went away no longer wants slots: the others' shares
	// grow, and their queued entries may start in the slots it was owed.
	s.dispatch(now)
	s.kick()
}

// listed returns the streams of the last discovery.
func (s *scheduler) listed() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k, st := range s.streams {
		if st.listed {
			out = append(out, k)
		}
	}
	return out
}

// pushUrgent queues reclaimed tasks, before the entries read of their
// streams, and starts what the free slots allow. After stop, it returns the
// tasks (to be handed back) instead.
//
// A stream queues no more reclaimed tasks than it starts at once (unpark);
// the rest are parked: held by this worker (claimed, their leases extended
// like any held entry's), counted in the stats, but neither queued nor
// counted in the read budget of the other streams, and started only as
// their stream's queue drains (unpark), under the usual share / borrow
// rules. A reclaim round thus claims a stream's due entries as far as
// claimRoom allows without its reclaimed entries taking the read budget or
// the slots of the streams beside it. Parked tasks are bounded by
// claimRoom (what a stream starts in maxAge at its share) and by
// reclaimBudget (the worker's free slots and turnover), and one held
// unstarted for a visibility timeout is handed back (takeStale).
func (s *scheduler) pushUrgent(ts []*task) (refused []*task) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reclaiming = 0 // the round is over: what it brought is queued now
	if len(ts) == 0 {
		return nil
	}
	if s.stopped {
		return ts
	}
	now := s.clock()
	for _, t := range ts {
		st := s.stream(t.m.Stream)
		t.st, t.queuedAt, t.claimedAt, t.reclaimed = st, now, now, true
		st.parked = append(st.parked, t)
		s.parked++
	}
	// A stream that was no contender at the reader's last classify is
	// classified before its entries are queued and start: a slow one would
	// otherwise take its equal share of the slots until the next read
	// round.
	for _, t := range ts {
		s.update(t.st, now)
	}
	s.classify(now)
	for _, t := range ts {
		s.unpark(t.st, now)
	}
	s.dispatch(now)
	return nil
}

// unpark queues st's parked tasks, before its other entries, as many as it
// may start at once (its share less what it runs and has queued), and one
// when it has nothing queued (under s.mu): a stream with parked tasks always
// has one queued, so it is in the ready list and takes slots by the usual
// rules (its share, borrowing as lender allows), one parked task after the
// other. Its queue stays within its share (+1), so parked tasks take no
// room in the read-ahead of the streams beside it.
func (s *scheduler) unpark(st *sstream, now time.Time) {
	if len(st.parked) == 0 {
		return
	}
	n := min(len(st.parked), s.shareOf(st, s.share())-st.running-st.queued())
	if st.queued() == 0 {
		n = max(n, 1)
	}
	if n <= 0 {
		return
	}
	for _, t := range st.parked[:n] {
		t.queuedAt = now
		st.urgent = append(st.urgent, t)
	}
	clear(st.parked[:n])
	st.parked = st.parked[n:]
	if len(st.parked) == 0 {
		st.parked = nil
	}
	s.parked -= n
	s.queued += n
	st.reclaimQ += n
	s.reclaimQ += n
	s.update(st, now)
}

// unclaim counts t, a queued task leaving its stream's queue (started or
// handed back), out of the reclaimed tasks held unstarted (under s.mu).
func (s *scheduler) unclaim(t *task) {
	if t.reclaimed {
		t.reclaimed = false
		t.st.reclaimQ--
		s.reclaimQ--
	}
}

// dispatch starts tasks while slots are free (under s.mu).
func (s *scheduler) dispatch(now time.Time) {
	for {
		t := s.pick(now)
		if t == nil {
			return
		}
		s.start(t)
	}
}

// pick takes a free slot and the task to run in it, or returns nil (under
// s.mu).
func (s *scheduler) pick(now time.Time) *task {
	if s.free == 0 || s.stopped || len(s.readyList) == 0 {
		return nil
	}
	share := s.share()
	var best, old *sstream
	bestUnder := false
	least, any := time.Duration(0), false
	var oldest time.Time
	for _, st := range s.readyList {
		if st.paused(now) {
			continue
		}
		if !any || st.vtime < least {
			least, any = st.vtime, true
		}
		under := st.running < s.shareOf(st, share)
		// Only a stream under its share ages: one whose handlers outlast
		// maxAge would otherwise take a slot more at every handler time.
		if s.maxAge > 0 && under {
			if at := st.headQueuedAt(); old == nil || at.Before(oldest) {
				old, oldest = st, at
			}
		}
		if best == nil || (under && !bestUnder) || (under == bestUnder && st.vtime < best.vtime) {
			best, bestUnder = st, under
		}
	}
	aged := false
	switch {
	case best == nil:
		return nil
	case old != nil && now.Sub(oldest) > s.maxAge:
		aged = true
		// An entry of a stream under its share has waited in its queue
		// for maxAge: it goes first, whatever the charges, so that no entry read here waits
		// until it is handed back as stale (takeStale) while slots turn
		// over — a stream of streams coming back, each at the virtual
		// time, would otherwise go before it for as long as they come.
		best = old
	case !bestUnder:
		// Every stream with queued entries has its share: the slot is
		// lent to one that may borrow, if any.
		if best = s.lender(now); best == nil {
			return nil
		}
	}
	var t *task
	if len(best.urgent) > 0 && !(aged && len(best.ready) > 0 && best.ready[0].heldSince().Before(best.urgent[0].heldSince())) {
		t, best.urgent = best.urgent[0], best.urgent[1:]
	} else {
		t, best.ready = best.ready[0], best.ready[1:] // or the aged entry, read before the urgent ones came
	}
	if t.dueRetry {
		t.dueRetry = false
		best.retryQ--
	}
	s.unclaim(t)
	s.queued--
	s.free--
	s.running++
	best.account(now)
	if best.running == 0 {
		best.turnedAt = now
	}
	best.running++
	s.vnow = max(s.vnow, least)
	t.charged = best.avg
	best.vtime += t.charged
	s.unpark(best, now)
	s.update(best, now)
	if best.queued() <= s.bufCap(best)/2 {
		s.kick()
	}
	return t
}

// headQueuedAt is since when the longest-held task at the head of st's
// queues has waited unstarted: since it was queued, or, reclaimed, since
// its claim (heldSince) — the age takeStale hands it back at. Aged by its
// queuedAt, which unpark stamps afresh, a reclaimed entry parked for a
// while was not "old" here when takeStale found it stale: a dead
// consumer's entries on a stream with a share of one slot among 301
// waited their turn past the visibility timeout, were handed back and
// claimed again by the same worker (TestBreakProbeIgnoresReadAhead, 1 run
// in 4).
func (st *sstream) headQueuedAt() time.Time {
	switch {
	case len(st.urgent) == 0:
		return st.ready[0].heldSince()
	case len(st.ready) == 0 || st.urgent[0].heldSince().Before(st.ready[0].heldSince()):
		return st.urgent[0].heldSince()
	default:
		return st.ready[0].heldSince()
	}
}

// lender returns the stream with queued entries, over its share, that may
// take one more slot, the least charged first; nil if none may (under
// s.mu). A stream may while the streams that want slots (entries queued, or
// their next read on the way) and whose handlers are much faster than its
// (more than twice as fast, plus lendSlack) leave the slot unused: it must
// leave them their head-room free (see reserve.slots): half again the
// slots they kept busy together, plus one, and at least a slot for each
// that runs none; all of them while one of them is full (see mayBorrow).
// Lending a slot to a stream about as fast as the others costs
// them nothing (the slot is back before long); lending it to a 500 ms
// stream while a 1 ms one that keeps 10 slots busy waits for its read
// costs the 1 ms one 500 records; but a 20 ms stream may use the slots a
// no-op stream beside it leaves idle. A stream not timed yet may not
// borrow while another wants slots. It costs O(streams with queued entries
// × streams running handlers), not O(contenders) (see sched_index.go).
func (s *scheduler) lender(now time.Time) *sstream {
	// Every stream with queued entries holds its share: there are at
	// most Concurrency of them.
	cands := s.candBuf[:0]
	for _, st := range s.readyList {
		if !st.paused(now) {
			cands = append(cands, st)
		}
	}
	slices.SortFunc(cands, func(a, b *sstream) int { return cmp.Compare(a.vtime, b.vtime) })
	s.candBuf = cands
	var ref *sstream
	if s.recentRef(now) && !s.wantsSlots(s.ref, now) {
		ref = s.ref // its read found nothing a moment ago: it keeps its head-room (see classify)
	}
	defer clear(cands)
	for _, st := range cands {
		if s.mayBorrow(st, ref, now) {
			return st
		}
	}
	return nil
}

// mayBorrow reports whether st may take a slot beyond its share (see
// lender): the streams that want slots are the idle ones of idleWant, those
// of runList that want slots, and ref (nil: none), which keeps its
// head-room though it does not want slots now.
//
// While one of the much faster streams that want slots is full (a read
// for at least the slots it is owed returned its whole COUNT: see
// readDone), st may not borrow at all: that stream has more entries than
// it may start and fills every slot it is given at its next read, so a
// free slot is only the gap between two of its reads.
// Its occupancy is no measure of what it needs then: it is what its reads
// let it run. A 1 ms stream beside four 2 s ones with read-ahead 0 ran 4-5
// handlers a read round trip apart; the 2 s streams borrowed the slots it
// left free in between and held them 2 s each, 7.4 slots against their 4,
// and it ran at 0.31 of its rate alone against its share of 0.75
// (TestReviewSched4SeveralSlowStreamsLowReadAhead).
func (s *scheduler) mayBorrow(st, ref *sstream, now time.Time) bool {
	if !st.timed {
		if s.idleWant.n > 0 || (ref != nil && ref != st) {
			return false
		}
		for _, c := range s.runList {
			if c != st && s.wantsSlots(c, now) {
				return false
			}
		}
		return s.free > 0
	}
	var r reserve
	s.idleWant.refresh(now)
	n, full, occ := s.idleWant.faster(st.avg)
	if full > 0 {
		return false
	}
	if n > 0 {
		r.any = true
		r.idle += n
		r.used += occ
	}
	for _, c := range s.runList {
		if c != st && st.avg > 2*c.avg+lendSlack && s.wantsSlots(c, now) {
			if c.full {
				return false
			}
			c.account(now)
			r.add(c)
		}
	}
	if ref != nil && ref != st && st.avg > 2*ref.avg+lendSlack {
		ref.account(now)
		r.add(ref)
	}
	return s.free > r.slots()
}

// reserve adds up the head-room a slower stream must leave to the much
// faster streams that want slots.
type reserve struct {
	idle    int     // faster streams running no handler: each is owed a slot
	used    float64 // the slots they kept busy (over the last occWindow, or now if more), summed
	running int     // the handlers they run
	any     bool
}

func (r *reserve) add(c *sstream) {
	r.any = true
	r.used += max(c.occ, float64(c.running))
	r.running += c.running
	if c.running == 0 {
		r.idle++
	}
}

// slots is how many free slots the reserve keeps: half again the slots the
// faster streams kept busy together, plus one, less what they run (room for
// the bursts of streams whose entries come a read at a time) — and at least
// one for each of them running none, which its share promises it. The
// burst room follows their load, not their number: the same load spread
// over six streams keeps about what it keeps as one (once it grew with
// their number: 7.4 slots idle instead of 2.1); the slot each is owed
// keeps a 200 ms stream among nine 1 ms ones on 4 slots to its share of 1.
func (r *reserve) slots() int {
	if !r.any {
		return 0
	}
	return max(r.idle, int(1.5*r.used+0.999)+1-r.running, 0)
}

// finish is called when t's attempt in its slot is over, with its result
// (retry: t is due again at at) and the handler's time. It returns the next
// task to run in the same slot, or nil when the slot is given back; letGo
// when t was to be retried but the scheduler is stopped.
func (s *scheduler) finish(t *task, took time.Duration, res result, at time.Time) (next *task, letGo bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock()
	st := t.st
	st.account(now)
	st.running--
	st.turnedAt = now
	s.running--
	s.free++
	s.finished++
	st.vtime += took - t.charged
	// An entry settled without running (its lease lost, dead-lettered
	// unrun) is no handler time: a 0 folded into the average made the
	// stream look faster than it is.
	timing := res != settled || took > 0
	first := timing && !st.timed
	switch {
	case first:
		st.avg, st.timed = took, true
	case timing:
		st.avg += (took - st.avg) / 8
	}
	if timing {
		for s.maxAge > 0 && st.longest > 0 && now.Sub(st.longestAt) >= s.maxAge {
			st.longest /= 2
			st.longestAt = st.longestAt.Add(s.maxAge)
		}
		if took >= st.longest {
			st.longest, st.longestAt = took, now
		}
	}
	if res == handled || res == retry {
		f := 0.0
		if res == retry {
			f = 1
		}
		if first {
			st.fails = f
		} else {
			st.fails += (f - st.fails) / 8
		}
	}
	switch {
	case res == handled:
		st.streak = 0
	case res == retry && s.stopped:
		letGo = true
	case res == retry:
		t.due = at
		heap.Push(&s.timers, t)
		st.waiting++
		s.waiting++
		s.arm()
	}
	wasContender := st.contender
	s.update(st, now)
	if first {
		s.classify(now) // a slow stream's first timing: its share shrinks at once
	}
	next = s.pick(now) // kicks the reader if st's queue runs low
	if next == nil {
		// The slot stays free with nothing queued for it: the reader has
		// room for more (a read it held back for the read-ahead bound).
		s.kick()
	}
	if st.contender != wasContender || first {
		// The contenders changed (st left or came back), or st's
		// classification did: the shares and the head-room the others
		// keep free changed with them, and a free slot other than this
		// one may now go to a queued entry.
		s.dispatch(now)
	}
	return next, letGo
}

// backOff pauses t's stream after a RetryError asking for after (0: the
// exponential backoff of the stream's consecutive back-offs, or of t's, if
// more) and returns the wait. Nothing of the stream starts or is read
// meanwhile: its downstream is unavailable.
func (s *scheduler) backOff(t *task, after time.Duration, backoff func(n int64) time.Duration) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := t.st
	st.streak++
	wait := after
	if wait <= 0 {
		wait = backoff(max(st.streak, t.backoffs))
	}
	now := s.clock()
	if until := now.Add(wait); until.After(st.pauseUntil) {
		st.pauseUntil = until
		heap.Push(&s.timers, &task{st: st, due: until, wake: true})
		s.arm()
		s.update(st, now)
	}
	return wait
}

// arm sets the timer for the earliest entry of the heap (under s.mu).
func (s *scheduler) arm() {
	if len(s.timers) == 0 || s.stopped {
		return
	}
	at := s.timers[0].due
	if s.timer != nil && !s.timerAt.IsZero() && !at.Before(s.timerAt) {
		return
	}
	s.timerAt = at
	if s.timer == nil {
		s.timer = time.AfterFunc(time.Until(at), s.fire)
	} else {
		s.timer.Reset(time.Until(at))
	}
}

// fire moves the due retries to their streams' queues and ends pauses.
func (s *scheduler) fire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.timerAt = time.Time{}
	if s.stopped {
		return
	}
	now := s.clock()
	for len(s.timers) > 0 && !s.timers[0].due.After(now) {
		t := heap.Pop(&s.timers).(*task)
		st := t.st
		if !t.wake {
			st.waiting--
			s.waiting--
			t.queuedAt = now
			t.dueRetry = true
			st.retryQ++
			st.urgent = append(st.urgent, t)
			s.queued++
		}
		s.update(st, now)
	}
	s.arm()
	s.dispatch(now)
	s.kick()
}

// stop starts nothing more and returns what is queued (to be handed back)
// and what waits for a retry (to be let go: pending, reclaimed later).
func (s *scheduler) stop() (queued, waiting []*task) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	if s.timer != nil {
		s.timer.Stop()
	}
	for _, st := range s.streams {
		st.retryQ, st.reclaimQ = 0, 0
		queued = append(queued, st.urgent...)
		queued = append(queued, st.parked...)
		queued = append(queued, st.ready...)
		st.urgent, st.parked, st.ready = nil, nil, nil
	}
	for _, t := range s.timers {
		if !t.wake {
			waiting = append(waiting, t)
		}
	}
	s.timers = nil
	s.queued, s.waiting, s.parked, s.reclaimQ = 0, 0, 0, 0
	return queued, waiting
}

// counts returns the tasks queued (parked ones too), waiting for a retry
// and running, and how many of the queued are parked.
func (s *scheduler) counts() (queued, waiting, running, parked int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queued + s.parked, s.waiting, s.running, s.parked
}

// readRequest is what the reader should read next.
type readRequest struct {
	hot      []string // streams believed to have entries, not slow, least recently read first
	need     int      // entries the emptiest of them has room for
	slow     []string // the same for the slow streams (read apart: their part is smaller)
	slowNeed int
	slowLast bool     // the hot streams' first goes before the slow streams' (read less recently; charged less when the budget does not cover them all): read them first
	anyHot   bool     // some stream is hot, wanting entries or not
	idle     []string // the other streams that want entries (to probe), least recently read first
	budget   int      // entries the read-ahead has room for
}

// empty reports whether nothing is wanted: wait for space.
func (r *readRequest) empty() bool { return len(r.hot) == 0 && len(r.slow) == 0 && len(r.idle) == 0 }

// hotRead returns which hot streams to read with budget entries of room,
// and the COUNT: each at least one, the least charged first (see wanted)
// when the room does not cover them all (more: some are left for the next
// read).
func (r *readRequest) hotRead(budget int) (keys []string, count int64, more bool) {
	return splitRead(r.hot, r.need, budget)
}

// slowRead is hotRead for the slow streams.
func (r *readRequest) slowRead(budget int) (keys []string, count int64, more bool) {
	return splitRead(r.slow, r.slowNeed, budget)
}

// parts returns hotRead and slowRead in the order to read them: the list
// whose first stream goes first (slowLast: read least recently, or charged
// least when the budget does not cover them all), so that with
// little room (a few slots, no read-ahead) neither list takes it all at
// every round.
func (r *readRequest) parts() [2]func(int) ([]string, int64, bool) {
	if r.slowLast {
		return [2]func(int) ([]string, int64, bool){r.hotRead, r.slowRead}
	}
	return [2]func(int) ([]string, int64, bool){r.slowRead, r.hotRead}
}

func splitRead(hot []string, need, budget int) (keys []string, count int64, more bool) {
	if len(hot) == 0 || budget <= 0 {
		return nil, 0, len(hot) > 0
	}
	keys = hot
	if len(keys) > budget {
		keys, more = keys[:budget], true
	}
	return keys, int64(max(1, min(need, budget/len(keys)))), more
}

// wanted returns the streams that want entries: the hot ones, and if probe
// the others. An empty request means: wait for space. Without probe, its
// cost is that of the hot streams only.
func (s *scheduler) wanted(probe bool) readRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	var r readRequest
	s.reading = 0 // the reader's previous round is over
	if s.stopped {
		return r
	}
	r.anyHot = len(s.hotSet) > 0
	// Entries for the free slots start at once; the read-ahead comes on
	// top of them. A reclaim round on the way may bring its entries too.
	now := s.clock()
	budget := s.readBudget(now)
	if budget <= 0 && s.free == 0 {
		// Nothing to read and no slot to start anything in: no classify
		// (O(contenders)) at every wake-up of a saturated worker.
		return r
	}
	s.classify(now)
	if s.free > 0 {
		// The classification may have grown a share (a slow stream is
		// not slow any more, the reference went away): start what the
		// free slots now allow, before the budget is counted.
		s.dispatch(now)
		budget = s.readBudget(now)
	}
	// A stream that wants slots, has nothing queued and runs fewer than
	// its share is read for the slots it is owed (see starvedRoom),
	// whatever the others have queued: 31 reclaimed entries of a 2 s
	// stream made the budget 0, and a 1 ms stream beside it was not read
	// for a whole handler time with 15 slots free. What it reads starts in
	// the free slots and in those lent to others as they come back (it is
	// under its share: they go to it first). The read stays within
	// Concurrency + ReadAhead − queued, so queued stays within
	// Concurrency + ReadAhead.
	starved := false
	if s.free > 0 {
		if n := min(s.starvedRoom(now), s.conc+s.readAhead-s.queued-s.reclaiming); n > budget {
			// A probe that is due still runs (with what the starved
			// streams leave, or first when the last one could not
			// cover every idle stream: readLoop). Turned off here,
			// it never ran beside a read-bound fast stream whose
			// starved room (free and lent slots) always exceeded the
			// budget: entries appended to idle streams were never
			// read (TestReviewSched10StarvedFastStreamStopsProbes).
			budget, starved = n, true
		}
	}
	if budget <= 0 {
		return r
	}
	r.budget = budget
	defer func() {
		if !r.empty() {
			s.reading = budget // released as the entries are queued (readDone), or at the next round
		}
	}()
	wants := func(st *sstream) bool {
		return st.listed && len(st.parked) == 0 && !st.paused(now) && st.waiting < s.maxWaiting && st.queued() <= s.bufCap(st)/2
	}
	var hot, slow []*sstream
	share := s.share()
	for st := range s.hotSet {
		switch {
		case !wants(st):
		case starved:
			// the starved streams, for what they are owed (the least of
			// them: no stream reads more than it is owed) — and the
			// other hot streams that are not slow and have nothing
			// queued, at that COUNT: beside a read-bound fast stream
			// (a 100 µs one at 2 of its 8 slots, its queue empty a
			// round trip after each read) nearly every read is a
			// starved one, and a 3 ms stream left out of them ran dry
			// with slots free: 0.71 / 0.65 of the 14 slots' worth
			// (3 / 5 ms, read-ahead 0) instead of 0.84
			// (TestReviewSched7ReadBoundStreamLooksFull). A slow stream
			// is left out: it starts none of them in the free slots
			// (the faster streams' head-room), and its next entry
			// comes with its own read.
			n := s.starvedOf(st, share, now)
			switch {
			case n <= 0 && st.queued() == 0 && !st.slow:
				hot = append(hot, st)
			case n <= 0:
			case st.slow:
				slow = append(slow, st)
				r.slowNeed = minNeed(r.slowNeed, n)
			default:
				hot = append(hot, st)
				r.need = minNeed(r.need, n)
			}
		case st.slow:
			slow = append(slow, st)
			r.slowNeed = max(r.slowNeed, s.bufCap(st)-st.queued())
		default:
			// At least what it is owed: a COUNT below that, come back
			// whole, says nothing of whether it has more than its share
			// (see readDone).
			hot = append(hot, st)
			r.need = max(r.need, s.bufCap(st)-st.queued(), s.starvedOf(st, share, now))
		}
	}
	// Least recently read first, so that every hot stream is read in turn
	// when the budget covers them all. When it does not, the least
	// handler time charged first (then least recently read), and the list
	// whose first stream has the least goes first: with one slot and no
	// read-ahead, the reader chose which stream got the slot, and by count
	// (a 1 ms stream and a 500 ms one alternated record for record: the
	// 1 ms one ran at 0.002 of its rate).
	byCharge := budget < len(hot)+len(slow)
	if byCharge {
		sortByCharge(hot)
		sortByCharge(slow)
	} else {
		sortByRR(hot)
		sortByRR(slow)
	}
	for _, st := range hot {
		r.hot = append(r.hot, st.key)
	}
	for _, st := range slow {
		r.slow = append(r.slow, st.key)
	}
	if len(hot) > 0 && len(slow) > 0 {
		if byCharge {
			r.slowLast = hot[0].vtime < slow[0].vtime || (hot[0].vtime == slow[0].vtime && hot[0].rr < slow[0].rr)
		} else {
			r.slowLast = hot[0].rr < slow[0].rr
		}
	}
	if probe {
		var idle []*sstream
		for _, st := range s.streams {
			if !st.hot && wants(st) {
				idle = append(idle, st)
			}
		}
		// Least recently read first: a probe that finds more entries
		// than the read-ahead takes stops there, and the next one goes
		// on where it stopped.
		sortByRR(idle)
		for _, st := range idle {
			r.idle = append(r.idle, st.key)
		}
	}
	return r
}

// readBudget is how many entries a read may bring (under s.mu): the free
// slots and the read-ahead, less what is queued (see queuedCapped) and
// what a reclaim round on the way may bring.
func (s *scheduler) readBudget(now time.Time) int {
	return s.readAhead + s.free - s.queuedStartable(now) - s.reclaiming + s.queuedCapped(now)
}

func minNeed(cur, n int) int {
	if cur == 0 {
		return n
	}
	return min(cur, n)
}

// starvedOf is how many entries st would start at once (its share less
// what it runs) if it wants slots and has nothing queued, else 0 (under
// s.mu).
func (s *scheduler) starvedOf(st *sstream, share int, now time.Time) int {
	if !st.listed || st.queued() > 0 || len(st.parked) > 0 || st.paused(now) || st.waiting >= s.maxWaiting {
		return 0
	}
	return max(s.shareOf(st, share)-st.running, 0)
}

// starvedRoom sums starvedOf over the hot streams, at most the free slots
// plus the slots lent out (held by streams beyond their share: they come
// back to the streams under theirs first) (under s.mu). Capped at the
// free slots alone, a 100 µs stream at 2 of its 8 slots beside a 3 ms or
// 5 ms one that borrowed the rest was read for the 1-2 slots free at a
// time, one round trip apart, and ran 0.26 / 0.44 of its producer's
// 20,000/s at read-ahead 0. Not capped at all, fifteen 500 ms streams (no
// faster stream timed yet: equal shares of 2, one handler each) were read
// for a second entry each; every read was a starved one (no probe), and
// the 1 ms stream beside them, empty at its first probe, was not probed
// again: 0 records in 5 s (TestReviewHol2SlowQueuesBlockFastRead). What
// is lent out is the most the starved streams can take back before the
// borrowers' handlers end. O(hot streams) as wanted, and O(runList) (at
// most Concurrency) once the free slots are covered.
func (s *scheduler) starvedRoom(now time.Time) int {
	share := s.share()
	n, limit := 0, -1
	for st := range s.hotSet {
		n += s.starvedOf(st, share, now)
		if limit < 0 && n > s.free {
			limit = s.free
			for _, c := range s.runList {
				limit += max(c.running-s.shareOf(c, share), 0)
			}
		}
		if limit >= 0 && n >= limit {
			return limit
		}
	}
	return n
}

// queuedStartable returns how many tasks are queued in streams that are not
// paused (under s.mu). A paused stream's queue waits for the end of its
// pause, holding no slot; it takes no room in the read-ahead of the others
// (nor in the reclaim budget), or a partition whose downstream is away
// would slow the healthy ones down to a few entries per read.
func (s *scheduler) queuedStartable(now time.Time) int {
	n := s.queued
	for _, st := range s.readyList {
		if st.paused(now) {
			n -= st.queued()
		}
	}
	return n
}

// queuedCapped returns how many queued tasks wait for a handler of their
// own stream to end, at most one per handler it runs, in the streams that
// hold their share (under s.mu). While slots are free, such a stream may
// not start them (the free slots are the head-room of much faster
// streams: see lender): they are the next entries of its running handlers,
// and counting them against the read-ahead let fifteen 500 ms streams, one
// queued entry each, use up a read-ahead of 4 or 8, so the 1 ms stream the
// free slot was kept for was never read (9 records in 5 s; 4,000 with
// --read-ahead 16). Memory stays bounded: what a read may bring is
// ReadAhead + free − (queued − queuedCapped), and queuedCapped is at most
// the handlers running, so queued stays within ReadAhead + Concurrency.
func (s *scheduler) queuedCapped(now time.Time) int {
	if s.free == 0 {
		return 0
	}
	share := s.share()
	n := 0
	for _, st := range s.readyList {
		if !st.paused(now) && st.running >= s.shareOf(st, share) {
			n += min(st.queued(), st.running)
		}
	}
	return n
}

// endRead releases what the reader's round reserved (wanted): its
// non-blocking reads are over. (A blocking read is not reserved for: it
// waits for entries nobody can foresee, most often for a whole
// BlockTimeout.)
func (s *scheduler) endRead() {
	s.mu.Lock()
	s.reading = 0
	s.mu.Unlock()
}

// anyHot reports whether some stream is hot: the reader will have entries
// to read for it soon.
func (s *scheduler) anyHot() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.hotSet) > 0
}

// readDone queues what a read of keys with COUNT count returned (keys nil:
// a blocking read of earlier rounds; count 0: a probe, or not known) and
// starts what it can. A stream that returned nothing is not hot any more;
// one that returned entries is, and one that returned count of them, count
// at least what it is owed, is full. After stop, it returns the tasks (to
// be handed back) instead.
func (s *scheduler) readDone(keys []string, count int, ts []*task) (refused []*task) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return ts
	}
	now := s.clock()
	s.reading = max(s.reading-len(ts), 0)
	s.rr++
	for _, k := range keys {
		if st := s.streams[k]; st != nil {
			st.rr = s.rr
			st.hot = false
			st.got = 0
		}
	}
	for _, t := range ts {
		st := s.stream(t.m.Stream)
		t.st, t.queuedAt, t.reclaimed = st, now, false
		st.ready = append(st.ready, t)
		st.hot = true
		st.got++
		s.queued++
	}
	// Full only if the COUNT covered what the stream is owed (its share
	// less what it runs and had queued): then it has more than it may
	// start. A 100 µs stream keeping up with its 20,000/s was read for 4
	// (its part of the free slots), came back whole most of the time and,
	// full, kept a 3 ms stream beside it from borrowing: 5.9 of 16 slots
	// idle with entries queued (TestReviewSched7ReadBoundStreamLooksFull).
	// A smaller COUNT come back whole tells neither way: the flag stays.
	share := s.share()
	for _, k := range keys {
		if st := s.streams[k]; st != nil {
			owed := s.shareOf(st, share) - st.running - (st.queued() - st.got)
			switch {
			case count == 0 || st.got < count:
				st.full = false
			case count >= owed:
				st.full = true
			}
			s.update(st, now)
		}
	}
	for _, t := range ts {
		s.update(t.st, now)
	}
	s.dispatch(now)
	return nil
}

// reclaimBudget is how many entries a reclaim round may claim now, given
// that recent attempts finished in the last visibility timeout: room for
// them goes Concurrency beyond the read-ahead, which new reads may not use,
// so that a dead worker's entries are taken over even while this one is
// saturated — but no more than its free slots and recent turnover, less
// the reclaimed entries it holds unstarted (queued or parked), so that a
// worker whose handlers hang, or are all busy, does not take entries it
// cannot start. Those held count because a burst repeats the round every
// few milliseconds (reclaimLoop): with the limit applied to each round
// alone, a worker with 2 free slots and a turnover of 2 claimed a dead
// worker's 100 entries 4 a round and parked 92 while another worker kept
// 16 slots idle (handled 22 s after due, 8.75 s with the idle worker
// claiming them: TestReviewSched5SaturatedWorkerHoardsReclaim). The room
// is reserved (reads leave it alone) until pushUrgent. Each stream's
// claim is limited further by claimRoom. The reclaimed entries of a paused
// stream (its downstream asked to wait) do not count: they wait for the
// pause, not for a slot, and take none; counted, 4 of them held a 4-slot
// worker's budget at 0 for a 120 s pause while another partition's dead
// entries waited with every slot free (TestReviewSched8PausedPartitionBlocksOtherClaims).
func (s *scheduler) reclaimBudget(recent int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return 0
	}
	now := s.clock()
	held := s.parked + s.reclaimQ
	for _, st := range s.streams {
		if st.paused(now) {
			held -= len(st.parked) + st.reclaimQ
		}
	}
	b := max(min(s.readAhead+s.conc-s.queuedStartable(now)-s.reading, s.free+recent-held), 0)
	s.reclaiming = b
	return b
}

// claimRoom is how many more reclaimed entries of stream key a reclaim
// round may claim now (reclaimRound asks before it claims from the
// stream): what the stream starts within maxAge (half the visibility
// timeout) at its share — share × maxAge / its handler time, and at least
// what it starts at once — less the reclaimed entries of it held
// unstarted. A stream not timed yet gets what it starts at once. The rest
// stay due in Redis for the other workers, or for this one's next rounds
// as the stream's queue drains: claimed all at once, 32 dead entries of a
// 2 s partition at a share of one slot waited here up to 48 s unstarted,
// leased, while another worker could have run some
// (TestReviewSched5ParkedOutlastVisibilityTimeout). Claiming no faster
// than the stream starts them delays none on this worker: reclaimed
// entries start before the stream's read ones, and maxAge of work covers
// the wait for the next reclaim round (the interval is a quarter of the
// visibility timeout by default). The dead worker's pending list empties
// as fast as the live workers start its entries, no longer at the first
// round. Without maxAge (0: never set, in tests) there is no limit.
func (s *scheduler) claimRoom(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return 0
	}
	if s.maxAge <= 0 {
		return math.MaxInt
	}
	st := s.streams[key]
	if st == nil {
		return max(s.claimShare(nil), 1)
	}
	now := s.clock()
	if st.paused(now) {
		return 0 // nothing of it starts before the pause ends, here or elsewhere
	}
	return max(s.claimCap(st, now)-len(st.parked)-st.reclaimQ, 0)
}

// claimCap is how many reclaimed entries st may hold unstarted (see
// claimRoom; under s.mu).
//
// Its handler time is the average, or, while handlers of it run, at least
// the time since one of its attempts last finished: the average counts
// only finished attempts, so handlers that hang left it at 1 ms, and a
// worker whose 16 slots all hung on the stream claimed a dead worker's 200
// entries of it and held them unstarted a visibility timeout while an idle
// worker found none (TestReviewSched8HungHandlersHoardReclaim). Once
// nothing of it finished for 4 of its longest recent attempts, and at
// least maxAge/4 (an eighth of the visibility timeout: the 16 hung slots
// above had finished their last 2.4 s before the tick), with every slot
// of its share busy, it claims none at
// all: what it would start at once is 0. Not 4 averages and 250 ms: healthy
// handlers of 1 ms with 1 in 20 taking 10 s fill every slot with slow ones
// for seconds, and every saturated worker refused the dead worker's
// commit-holding entry for 34 s, or for ever with one slot
// (TestReviewSched9BimodalSaturatedConc16, ...Conc1); a downstream that
// slowed from 10 ms to 8 s looked hung until its first slow attempt ended
// (TestReviewSched9SlowdownLooksHung). A shorter silence only lowers the
// claim (the handler time above), and the oldest entry is always claimed.
//
// The claim lasts until the next round: over maxAge, or over the reclaim
// interval if that is longer (a little more, so the queue does not run dry
// just before the tick; less than the visibility timeout, after which
// unstarted entries are handed back). Over maxAge alone, an 8 s interval
// left a 1 s partition's queue dry between ticks (its 40 dead entries
// handled 48 s after due against 35.5 s with a 2.5 s interval:
// TestReviewSched8LongIntervalStarvesSlowPartition).
func (s *scheduler) claimCap(st *sstream, now time.Time) int {
	share := s.claimShare(st)
	atOnce := max(share-st.running, 0)
	h := max(st.avg, slowFloor)
	if st.running > 0 {
		idle := now.Sub(st.turnedAt)
		if st.running >= share && idle > max(4*st.longest, s.maxAge/4) {
			return 0
		}
		h = max(h, idle)
	}
	if !st.timed {
		return max(atOnce, 1)
	}
	span := max(s.maxAge, min(s.claimEvery+s.maxAge/4, 2*s.maxAge*9/10))
	n := int64(share) * int64(span) / int64(h)
	return int(max(n, int64(max(atOnce, 1))))
}

// claimShare is the share of the slots st will have once its reclaimed
// entries make it a contender and classify has judged its speed: st
// counted among the contenders, and shrunk as shareOf does if its handlers
// are slow beside the last classify's reference. A stream with nothing to
// run is no contender, so it is not classified: its shareOf would be the
// full share (nil: a stream not seen yet).
func (s *scheduler) claimShare(st *sstream) int {
	n := len(s.contenders)
	if st == nil || !st.contender {
		n++
	}
	share := (s.conc + n - 1) / n
	if st != nil && st.timed && s.fastAvg >= 0 && st.avg > slowRatio*s.fastAvg+slowSlack {
		return max(1, int(int64(share)*int64(slowRatio*s.fastAvg+slowSlack)/int64(st.avg)))
	}
	return share
}

// finishedCount returns how many attempts finished so far.
func (s *scheduler) finishedCount() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.finished
}

// takeStale removes and returns the tasks held unstarted since before
// before: queued since then, or reclaimed since then (queued or parked; the
// claim's time, which unpark leaves alone: it stamps queuedAt afresh as a
// parked task moves into the queue, so parked tasks behind a queue that
// turned over were never stale and waited up to 4.8 visibility timeouts,
// TestReviewSched5ParkedOutlastVisibilityTimeout). This worker cannot start
// them (its handlers hang, are much slower than the visibility timeout, or
// the stream's share shrank after the claim), and another worker may. Only
// those: a stream's other parked tasks stay (handing back all of them with
// its stale ones, those parked a tick earlier too, had two workers pass
// 100 entries back and forth, 1,208 claims:
// TestReviewSched5HandBackChurn). The time a stream was paused (its
// downstream asked to back off) does not count: another worker would have
// to wait too.
func (s *scheduler) takeStale(before time.Time) []*task {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	now := s.clock()
	var out []*task
	for _, st := range s.streams {
		if st.queued() == 0 && len(st.parked) == 0 {
			continue
		}
		if !st.pauseUntil.Before(before) {
			continue
		}
		n := len(out)
		keep := func(q []*task, queued bool) []*task {
			kept := q[:0]
			for _, t := range q {
				if !t.heldSince().Before(before) {
					kept = append(kept, t)
					continue
				}
				if queued {
					if t.dueRetry {
						t.dueRetry = false
						st.retryQ--
					}
					s.unclaim(t)
					s.queued--
				} else {
					s.parked--
				}
				out = append(out, t)
			}
			clear(q[len(kept):])
			return kept
		}
		st.urgent, st.ready = keep(st.urgent, true), keep(st.ready, true)
		if st.parked = keep(st.parked, false); len(st.parked) == 0 {
			st.parked = nil
		}
		if len(out) > n {
			s.unpark(st, now)
			s.update(st, now)
		}
	}
	if len(out) > 0 {
		s.dispatch(now)
		s.kick()
	}
	return out
}

// heldSince is when t began to wait here unstarted: its claim for a
// reclaimed task, else when it was queued.
func (t *task) heldSince() time.Time {
	if t.reclaimed && !t.claimedAt.IsZero() && t.claimedAt.Before(t.queuedAt) {
		return t.claimedAt
	}
	return t.queuedAt
}

type taskHeap []*task

func (h taskHeap) Len() int           { return len(h) }
func (h taskHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h taskHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].idx = i; h[j].idx = j }
func (h *taskHeap) Push(x any)        { t := x.(*task); t.idx = len(*h); *h = append(*h, t) }
func (h *taskHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return t
}

// sortByCharge orders streams by handler time charged (vtime), then least
// recently read first.
func sortByCharge(sts []*sstream) {
	slices.SortFunc(sts, func(a, b *sstream) int {
		if c := cmp.Compare(a.vtime, b.vtime); c != 0 {
			return c
		}
		return cmp.Compare(a.rr, b.rr)
	})
}

func sortByRR(sts []*sstream) {
	slices.SortFunc(sts, func(a, b *sstream) int { return cmp.Compare(a.rr, b.rr) })
}
