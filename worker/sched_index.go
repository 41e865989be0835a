package worker

import (
	"container/heap"
	"math/bits"
	"time"
)

// The lending rule (lender) needs, for each stream that would borrow a
// slot, the head-room of the streams that want slots and are much faster
// than it. Gathering every contender at every pick cost 54-60 µs a
// finished task with 1,000 hot streams (BenchmarkReviewHol2SchedMany).
// The streams that want slots split in two: those that run handlers (at
// most Concurrency of them: runList) and those that run none and have
// nothing queued — hot, their next read on the way (idleWant: any number
// of them). A stream with queued entries and no handler is under its
// share, so lender is not asked while there is one. runList is walked; the
// idle ones are kept in an index by handler time, with the counts and
// occupancies summed, so that a pick costs O(runList + log) whatever the
// number of hot streams.

// occUnit is the fixed point of the occupancies summed in wantIndex (exact
// adds and removes, no float drift).
const occUnit = 1 << 20

// wantBuckets is the number of handler-time buckets of wantIndex: 16 per
// power of two of nanoseconds, exact below 16 ns.
const wantBuckets = 60 * 16

// wantBucket returns the bucket of handler time d; it grows with d.
func wantBucket(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	v := uint64(d)
	l := bits.Len64(v)
	if l <= 4 {
		return int(v)
	}
	return (l-4)*16 + int((v>>(l-5))&15)
}

// wantIndex holds the idle streams that want slots by handler time (avg):
// a Fenwick tree of their number, how many of them are full and their
// summed occupancy per bucket, and the members of each bucket (for the one
// a threshold falls in). A member's avg does not change while it is one (it
// changes when a handler of it ends, and then it runs one); its full flag
// changes only with a read that leaves it a member (reindex re-inserts it).
// Its occupancy does: running none, it decays to 0 over two occupancy
// windows. A member with some is in a heap by the end
// of its window (occAt + occWindow), and is re-accounted when that passes
// (refresh, O(log n) each): kept as it was when it joined, it stayed up to
// 11 slots above the real one for 1.5-2 s, and held a slower stream off
// slots nobody used.
type wantIndex struct {
	n       int
	cnt     []int
	full    []int
	occ     []int64
	members [][]*sstream
	due     occHeap // members with an occupancy, by the end of its window
}

// occHeap orders streams by the end of their occupancy window.
type occHeap []*sstream

func (h occHeap) Len() int { return len(h) }
func (h occHeap) Less(i, j int) bool {
	return h[i].occAt.Before(h[j].occAt)
}
func (h occHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i]; h[i].dIdx = i; h[j].dIdx = j }
func (h *occHeap) Push(x any)   { st := x.(*sstream); st.dIdx = len(*h); *h = append(*h, st) }
func (h *occHeap) Pop() any {
	old := *h
	st := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	st.dIdx = -1
	return st
}

// refresh re-accounts the members whose occupancy window has ended by now
// (under s.mu): their summed occupancy follows the real one.
func (x *wantIndex) refresh(now time.Time) {
	for len(x.due) > 0 && now.Sub(x.due[0].occAt) >= occWindow {
		st := heap.Pop(&x.due).(*sstream)
		st.account(now)
		o := int64(st.occ * occUnit)
		x.add(st.wBucket, 0, 0, o-st.wOcc)
		st.wOcc = o
		if o > 0 {
			heap.Push(&x.due, st)
		}
	}
}

func (x *wantIndex) add(i int, dc, df int, do int64) {
	for i++; i <= wantBuckets; i += i & -i {
		x.cnt[i] += dc
		x.full[i] += df
		x.occ[i] += do
	}
}

// prefix sums the buckets below b.
func (x *wantIndex) prefix(b int) (n, full int, occ int64) {
	for i := b; i > 0; i -= i & -i {
		n += x.cnt[i]
		full += x.full[i]
		occ += x.occ[i]
	}
	return n, full, occ
}

// fullCount is what member st adds to the count of full members.
func fullCount(st *sstream) int {
	if st.wFull {
		return 1
	}
	return 0
}

// insert makes st a member.
func (x *wantIndex) insert(st *sstream) {
	if x.cnt == nil {
		x.cnt = make([]int, wantBuckets+1)
		x.full = make([]int, wantBuckets+1)
		x.occ = make([]int64, wantBuckets+1)
		x.members = make([][]*sstream, wantBuckets)
	}
	b := wantBucket(st.avg)
	st.wBucket, st.wOcc, st.wFull = b, int64(st.occ*occUnit), st.full
	st.wIdx = len(x.members[b])
	x.members[b] = append(x.members[b], st)
	x.add(b, 1, fullCount(st), st.wOcc)
	x.n++
	st.dIdx = -1
	if st.wOcc > 0 {
		heap.Push(&x.due, st)
	}
}

// remove ends st's membership.
func (x *wantIndex) remove(st *sstream) {
	b := st.wBucket
	m := x.members[b]
	last := m[len(m)-1]
	m[st.wIdx], last.wIdx = last, st.wIdx
	m[len(m)-1] = nil
	x.members[b] = m[:len(m)-1]
	st.wIdx = -1
	x.add(b, -1, -fullCount(st), -st.wOcc)
	x.n--
	if st.dIdx >= 0 {
		heap.Remove(&x.due, st.dIdx)
	}
}

// faster returns how many members have handlers much faster than a
// stream's whose take avg (avg > 2 × theirs + lendSlack, as mayBorrow),
// how many of those are full, and their summed occupancy.
func (x *wantIndex) faster(avg time.Duration) (n, full int, occ float64) {
	lim := avg - lendSlack
	if x.n == 0 || lim <= 0 {
		return 0, 0, 0
	}
	// 2 × c.avg < lim: c.avg ≤ lim/2, so c is at most in lim/2's bucket;
	// the buckets below count whole, that one member by member.
	b := wantBucket(lim / 2)
	n, full, o := x.prefix(b)
	for _, c := range x.members[b] {
		if 2*c.avg < lim {
			n++
			full += fullCount(c)
			o += c.wOcc
		}
	}
	return n, full, float64(o) / occUnit
}

// reindex keeps runList and idleWant in step with st (under s.mu, from
// update).
func (s *scheduler) reindex(st *sstream, now time.Time) {
	if run := st.running > 0; run != (st.rIdx >= 0) {
		if run {
			st.rIdx = len(s.runList)
			s.runList = append(s.runList, st)
		} else {
			last := s.runList[len(s.runList)-1]
			s.runList[st.rIdx], last.rIdx = last, st.rIdx
			s.runList[len(s.runList)-1] = nil
			s.runList = s.runList[:len(s.runList)-1]
			st.rIdx = -1
		}
	}
	idle := st.running == 0 && st.queued() == 0 && s.wantsSlots(st, now)
	if st.wIdx >= 0 && (!idle || st.wFull != st.full) {
		s.idleWant.remove(st)
	}
	if idle && st.wIdx < 0 {
		s.idleWant.insert(st)
	}
}
