package worker

// Review 7: the "full" flag (a stream whose last read returned its whole
// COUNT; a much slower stream may not borrow while a much faster one that
// wants slots is full) and bufCap taking the slow streams' parts out of the
// read-ahead only (58dcce1). The tests drive the scheduler on the simulated
// clock of holRig / schedSim (fetch.go's read loop, a read round trip of
// 200 µs). Tests named after a problem fail while it is there; they are
// skipped unless KBRIDGE_OPEN_FINDINGS=1 (openFinding) while it is open.
// Finding 1 (TestReviewSched7ReadBoundStreamLooksFull) is fixed.

import (
	"container/heap"
	"fmt"
	"testing"
	"time"
)

// TestReviewSched7ReadBoundStreamLooksFull: a 100 µs stream whose producer
// appends 20,000 entries/s (2 slots of work) beside a backlogged 3 ms or
// 5 ms one (much slower, not slow: equal shares, 8 of 16), read-ahead 0 or
// 1. The fast stream keeps up with its producer, but each read finds about
// what arrived in one round trip, and its COUNT (its part of the few free
// slots) is about that small: the read comes back "full" most of the time,
// though Redis holds nothing more. While it is full, the backlogged stream
// may not borrow at all, so it runs its share of 8 and 5.9 slots stay idle
// with its entries queued: it runs 0.58 of what the slots the fast one
// leaves would give (read-ahead 1: 0.66; before 58dcce1: 1.00, but the fast
// stream then got 0.25 of its producer's rate). With read-ahead 4 / 16 the
// same pair gives 0.80 / 0.86. Asked: ≥ 0.8 of (16 − 2 slots) × its rate
// per slot, and the fast stream ≥ 0.95 of its producer's rate.
// Fixed: full only when the COUNT covered what the stream is owed, hot
// reads at least that COUNT, a starved read for the slots lent out too
// (starvedRoom), and the other non-slow streams with nothing queued read
// along with it: 0.84 / 0.84 / 0.84 / 0.85 (ra 0 3 ms, 5 ms; ra 1), the
// fast stream at 1.00.
func TestReviewSched7ReadBoundStreamLooksFull(t *testing.T) {
	simTest(t)
	const rate = 20000.0
	for _, ra := range []int{0, 1} {
		for _, md := range []time.Duration{3 * holMs, 5 * holMs} {
			t.Run(fmt.Sprintf("ra%d-mid%v", ra, md), func(t *testing.T) {
				const end = 5 * time.Second
				res := runHol(16, ra, []holStream{{"f", 100 * time.Microsecond, 0, rate}, {"mid", md, 1000000, 0}}, end, false)
				ideal := (16 - rate*100e-6) * end.Seconds() / md.Seconds()
				fast := float64(res.done["f"]) / (rate * end.Seconds())
				t.Logf("mid %d records (%.2f of %.0f), fast %.2f of its producer's rate; busy %.1f, free slots while entries queued %.2f", res.done["mid"], float64(res.done["mid"])/ideal, ideal, fast, res.busy, res.idle)
				if float64(res.done["mid"]) < 0.8*ideal {
					t.Errorf("the %v stream ran %d records in %v, want ≥ %.0f (0.8 of the 14 slots the 2-slot stream leaves); %.2f slots free on average while entries were queued", md, res.done["mid"], end, 0.8*ideal, res.idle)
				}
				if fast < 0.95 {
					t.Errorf("the 100 µs stream ran %.2f of its producer's rate, want ≥ 0.95", fast)
				}
				if res.invErr != "" || res.maxQueued > 16+ra {
					t.Errorf("invariant %q; max queued %d (bound %d)", res.invErr, res.maxQueued, 16+ra)
				}
			})
		}
	}
}

// TestReviewSched7HungFullStreamProducerStops: the flagged edge case, the
// way it arises with the read budget free. A 1 ms stream with a backlog
// (full at every read) beside 1 or 4 streams of 2 s handlers; at 3 s every
// handler of the 1 ms stream it starts from then on hangs, and its producer
// stops 3 entries later. It takes the free slots with hung handlers until
// its entries run out; its next read finds nothing and clears full, and
// the slow streams borrow the slots it left. Held: over the next 20 s they
// run ≥ 0.8 of (16 − its hung handlers) slots' worth of 2 s handlers, full
// is cleared, no slot stays free.
func TestReviewSched7HungFullStreamProducerStops(t *testing.T) {
	simTest(t)
	for _, ra := range []int{0, 4} {
		for _, nSlow := range []int{1, 4} {
			t.Run(fmt.Sprintf("ra%d-slow%d", ra, nSlow), func(t *testing.T) {
				dur := map[string]time.Duration{"fast": holMs}
				keys := []string{"fast"}
				for i := range nSlow {
					k := fmt.Sprint("slow", i)
					dur[k] = 2 * time.Second
					keys = append(keys, k)
				}
				r := newHolRig(16, ra, dur)
				for _, k := range keys {
					r.backlog[k] = 1000000
				}
				const hangAt = 3 * time.Second
				s := r.sim.s
				s.start = func(tk *task) {
					if tk.m.Stream == "fast" && r.sim.now >= hangAt {
						r.sim.started++
						heap.Push(&r.sim.runs, simRun{tk, r.sim.now + 10*time.Hour})
						return
					}
					r.sim.begin(tk)
				}
				s.setStreams(keys)
				r.kicked()
				r.run(hangAt)
				r.backlog["fast"] = r.readN["fast"] + 3 // its producer stops
				slowDone := func() int {
					n := 0
					for _, k := range keys[1:] {
						n += r.sim.done[k]
					}
					return n
				}
				s0 := slowDone()
				r.run(hangAt + 20*time.Second)
				got := slowDone() - s0
				st := s.streams["fast"]
				want := 0.8 * float64(16-st.running) * 10
				t.Logf("after the hang: slow streams ran %d records in 20 s (want ≥ %.0f); fast runs %d hung, full %v, hot %v; %d slots free", got, want, st.running, st.full, st.hot, s.free)
				if float64(got) < want || st.full || s.free > 0 {
					t.Errorf("slow streams ran %d records in 20 s beside %d hung handlers (want ≥ %.0f); fast full %v; %d slots free", got, st.running, want, st.full, s.free)
				}
				if r.invErr != "" {
					t.Error(r.invErr)
				}
			})
		}
	}
}

// TestReviewSched7ManyTricklesLowReadAhead: TestReviewSched3HotAmongTrickles
// with read-ahead 0 and a 3 ms backlog stream too: 100 or 1,000 streams of
// 1 ms handlers, 1,000 records/s in all (one slot), each read with COUNT 1
// at most (their reads come back full often). Held: the backlog stream runs
// ≥ 0.8 of its rate on the 15 slots they leave (3 ms: 24,500-24,900 of
// 26,667 alone; 20 ms: 3,290-3,420 of 4,000 — the same as before 58dcce1).
func TestReviewSched7ManyTricklesLowReadAhead(t *testing.T) {
	simTest(t)
	for _, n := range []int{100, 1000} {
		for _, hd := range []time.Duration{3 * holMs, 20 * holMs} {
			t.Run(fmt.Sprintf("n%d-hot%v", n, hd), func(t *testing.T) {
				dur := map[string]time.Duration{"hot": hd}
				r := newHolRig(16, 0, dur)
				keys := []string{"hot"}
				r.backlog["hot"] = 1000000
				for i := range n {
					k := fmt.Sprint("t", i)
					dur[k] = holMs
					r.rate[k] = 1000 / float64(n)
					keys = append(keys, k)
				}
				r.sim.s.setStreams(keys)
				r.kicked()
				const end = 5 * time.Second
				r.run(end)
				want := 0.8 * 15 * end.Seconds() / hd.Seconds()
				t.Logf("hot %d records (want ≥ %.0f); free slots while entries queued %.2f", r.sim.done["hot"], want, r.meanIdleWithWork(end))
				if float64(r.sim.done["hot"]) < want || r.invErr != "" {
					t.Errorf("the %v stream ran %d records in %v beside %d trickles, want ≥ %.0f; invariant %q", hd, r.sim.done["hot"], end, n, want, r.invErr)
				}
			})
		}
	}
}

// TestReviewSched7RandomOpsTightBudget: review 3's random-operation harness
// (books, runList / idleWant with their full counts — checkIndex — and the
// read-ahead bound, half the seeds without failures) with budgets small enough that hot reads get COUNT 1-2
// and come back full often, so members of idleWant change their full flag
// while they stay members (reindex re-inserts them). Held.
func TestReviewSched7RandomOpsTightBudget(t *testing.T) {
	simTest(t)
	durs := []time.Duration{50 * time.Microsecond, time.Millisecond, 5 * time.Millisecond, 500 * time.Millisecond}
	for _, c := range [][2]int{{2, 0}, {3, 1}, {6, 0}, {16, 1}} {
		for seed := uint64(700); seed < 708; seed++ {
			t.Run(fmt.Sprintf("conc%d-ra%d-seed%d", c[0], c[1], seed), func(t *testing.T) {
				noFail := seed%2 == 0 // with failures, due retries are queued outside the read bound
				st := randomSchedOps(t, c[0], c[1], seed, durs, 4000, noFail)
				if noFail && st.maxQueued > c[0]+c[1] {
					t.Errorf("max queued %d > %d", st.maxQueued, c[0]+c[1])
				}
			})
		}
	}
}
