package worker

// Review (review9) of 8398587: claimCap's hung rule (a partition whose
// handlers fill its share and finished nothing for max(4 × avg, 250 ms)
// is claimed none of; its handler time is at least the time since one of
// its attempts finished, sstream.turnedAt), paused partitions neither
// claimed from nor counted against reclaimBudget, and a claim covering
// max(VT/2, interval + VT/8) below 0.9 VT (claimEvery). The tests drive
// review 5's and review 8's rigs (p5Worker, p8Run) on a simulated clock.
// Open findings (skipped unless KBRIDGE_OPEN_FINDINGS=1; each passed on
// 8398587's parent): 1 the hung rule misfires on healthy bimodal handlers
// (BimodalSaturatedConc1: never claimed in 300 s vs 0 s before;
// BimodalSaturatedConc16: claimed 33.75 s, started 42.6 s after due vs 0 s
// and 2.6 s; BimodalRandomConc1: claimed 5 s, started 13.8 s vs 0 s and
// 3.6 s); 2 a slowed-down partition looks hung until its first slow attempt
// ends (SlowdownLooksHung: oldest dead entry started 15 s after due vs 7 s).
// Held: BimodalRandom (4-slot workers, jittered slow handlers).

import (
	"strconv"
	"testing"
	"time"
)

func fmtInt(n int) string { return strconv.Itoa(n) }

// p9Dead is where the numbers of the dead worker's entries start (the
// reads number theirs from 1, far below).
const p9Dead = 1 << 40

// p9Watch follows a dead worker's entries p9Dead+1..p9Dead+n of stream:
// when the first (the one holding the partition's commit) was claimed and
// started, when all were handled, relative to dueAt.
type p9Watch struct {
	stream                       string
	n                            int
	dueAt                        time.Duration
	claimedAt, startedAt, doneAt time.Duration
	handled                      int
}

func newP9Watch(stream string, n int, dueAt time.Duration) *p9Watch {
	return &p9Watch{stream: stream, n: n, dueAt: dueAt, claimedAt: -1, startedAt: -1, doneAt: -1}
}

func (p *p9Watch) isDead(tk *task) bool {
	return tk.m.Stream == p.stream && p5Num(tk.m.ID) > p9Dead
}

// finished is called for each finished attempt (out decides its result).
func (p *p9Watch) finished(clk time.Duration, tk *task, res result) {
	if p.isDead(tk) && res == handled {
		p.handled++
		if p.handled == p.n && p.doneAt < 0 {
			p.doneAt = clk - p.dueAt
		}
	}
}

// check is run after every event (p8Run's each).
func (p *p9Watch) check(clk time.Duration, pool *p5Pool, ws []*p5Worker) {
	if p.claimedAt < 0 {
		due := pool.due[p.stream]
		if len(due) == 0 || due[0] != p9Dead+1 {
			p.claimedAt = clk - p.dueAt
		}
	}
	if p.startedAt < 0 {
		for _, w := range ws {
			if w.startedIDs[p5ID(p.stream, p9Dead+1)] > 0 {
				p.startedAt = clk - p.dueAt
			}
		}
	}
}

func (p *p9Watch) String() string {
	f := func(d time.Duration) string {
		if d < 0 {
			return "never"
		}
		return d.String()
	}
	return "oldest claimed " + f(p.claimedAt) + ", started " + f(p.startedAt) + ", all " + fmtInt(p.n) + " handled " + f(p.doneAt) + " after due (handled " + fmtInt(p.handled) + ")"
}

// p9Bimodal: handlers of p take 10 s for every 20th entry read and 1 ms
// for the others; the dead worker's entries take 1 ms.
func p9Bimodal(tk *task) time.Duration {
	n := p5Num(tk.m.ID)
	if n < p9Dead && n%20 == 0 {
		return 10 * time.Second
	}
	return time.Millisecond
}

// p9Saturated runs nw live workers of conc slots each (visibility timeout
// 10 s, interval 2.5 s, ticks spread over the interval), saturated by
// partition p (an endless backlog, handler times dur) until warm, then puts
// a dead worker's n entries of p due and runs for long more. out (nil:
// all handled) decides results.
func p9Saturated(t *testing.T, nw, conc int, dur func(*task) time.Duration, out p8Outcome, warm time.Duration, n int, long time.Duration) (*p9Watch, []*p5Worker) {
	t.Helper()
	var c *time.Duration
	return p9SaturatedOut(t, nw, conc, &c, dur, out, warm, n, long)
}

// p9SaturatedClk is p9Saturated with the clock shown to dur (*clk).
func p9SaturatedClk(t *testing.T, nw, conc int, clk **time.Duration, dur func(*task) time.Duration, warm time.Duration, n int, long time.Duration) (*p9Watch, []*p5Worker) {
	t.Helper()
	return p9SaturatedOut(t, nw, conc, clk, dur, nil, warm, n, long)
}

func p9SaturatedOut(t *testing.T, nw, conc int, clkp **time.Duration, dur func(*task) time.Duration, out p8Outcome, warm time.Duration, n int, long time.Duration) (*p9Watch, []*p5Worker) {
	t.Helper()
	const vt, interval = 10 * time.Second, 2500 * time.Millisecond
	var clk time.Duration
	*clkp = &clk
	base := time.Now().Add(10000 * time.Hour)
	pool := newP5Pool()
	var ws []*p5Worker
	for i := range nw {
		w := newP5Worker(fmtInt(i+1), &clk, base, conc, conc, vt, interval, interval+time.Duration(i)*interval/time.Duration(nw), pool, dur)
		w.s.setStreams([]string{"p"})
		ws = append(ws, w)
	}
	pool.backlog["p"] = 1 << 30
	var watch *p9Watch
	o := func(w *p5Worker, tk *task) (result, time.Duration, bool) {
		res, wait, pause := handled, time.Duration(0), false
		if out != nil {
			res, wait, pause = out(w, tk)
		}
		if watch != nil {
			watch.finished(clk, tk, res)
		}
		return res, wait, pause
	}
	p8Run(&clk, base, ws, warm, o, nil)
	for i := 1; i <= n; i++ {
		pool.put("p", p9Dead+i)
	}
	watch = newP9Watch("p", n, clk)
	p8Run(&clk, base, ws, clk+long, o, func() { watch.check(clk, pool, ws) })
	for _, w := range ws {
		if w.books != "" {
			t.Errorf("books: %s", w.books)
		}
	}
	return watch, ws
}

// TestReviewSched9BimodalSaturatedConc1: two live workers of 1 slot each,
// saturated by partition p whose handlers take 1 ms, but 10 s for one entry
// in 20 (healthy: the slow ones end). p's average (an EWMA of finished
// attempts) is about 100 ms, so while a slow one runs, 400 ms after the
// last finish the hung rule says p hangs: almost every tick finds both
// workers "hung". A dead worker's 5 entries (1 ms) of p are due at 60 s.
// The promise: claimed within the reclaim interval + 1 s after due, even
// with every live worker saturated; the oldest (commit-holding) starts at
// the first slot free after that (within a slow handler, 10 s).
func TestReviewSched9BimodalSaturatedConc1(t *testing.T) {
	simTest(t)
	w, ws := p9Saturated(t, 2, 1, p9Bimodal, nil, 60*time.Second, 5, 300*time.Second)
	p9Promise(t, w, ws, 10*time.Second, ": every live worker busy with healthy 10 s handlers looks hung")
}

// TestReviewSched9BimodalSaturatedConc16: as Conc1 with two 16-slot workers.
func TestReviewSched9BimodalSaturatedConc16(t *testing.T) {
	simTest(t)
	w, ws := p9Saturated(t, 2, 16, p9Bimodal, nil, 60*time.Second, 50, 300*time.Second)
	p9Promise(t, w, ws, 10*time.Second, "")
}

// p9Hash is a fixed pseudo-random number in [0, 1<<20) for entry id.
func p9Hash(id string) int {
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	return int(h>>4) & (1<<20 - 1)
}

// p9BimodalRandom: as p9Bimodal with jitter: one read entry in 20 (by a
// hash of its ID) takes 5 to 15 s, the others (and the dead ones) 1 ms.
func p9BimodalRandom(tk *task) time.Duration {
	if p5Num(tk.m.ID) > p9Dead {
		return time.Millisecond
	}
	if h := p9Hash(tk.m.ID); h%20 == 0 {
		return 5*time.Second + time.Duration(h%10000)*time.Millisecond
	}
	return time.Millisecond
}

// p9Promise checks the reclaim promise of the Saturated runs: the oldest
// dead entry claimed within the reclaim interval + 1 s after due, and
// started within slow (a slow handler's time) more; why says what broke it.
func p9Promise(t *testing.T, w *p9Watch, ws []*p5Worker, slow time.Duration, why string) {
	t.Helper()
	const interval = 2500 * time.Millisecond
	t.Logf("%v; claimed %d + %d", w, ws[0].claimed["p"], ws[1].claimed["p"])
	if w.claimedAt < 0 || w.claimedAt > interval+time.Second {
		t.Errorf("oldest dead entry claimed %v after due (want within %v)%s", w.claimedAt, interval+time.Second, why)
	}
	if w.startedAt < 0 || w.startedAt > interval+time.Second+slow {
		t.Errorf("oldest dead entry started %v after due (want within %v)", w.startedAt, interval+time.Second+slow)
	}
}

// TestReviewSched9BimodalRandom: as Bimodal with jitter: one read entry in
// 20 (by a hash of its ID) takes 5 to 15 s, the others 1 ms; two live
// workers of 4 slots. The 20 dead entries of p (1 ms) are due at 60 s.
func TestReviewSched9BimodalRandom(t *testing.T) {
	simTest(t)
	w, ws := p9Saturated(t, 2, 4, p9BimodalRandom, nil, 60*time.Second, 20, 300*time.Second)
	p9Promise(t, w, ws, 15*time.Second, "")
}

// TestReviewSched9SlowdownLooksHung: the downstream of p slows down (not
// hangs): its handlers took 10 ms, every attempt started from 60 s on
// takes 8 s. Two live workers of 8 slots saturated by p's backlog; a dead
// worker's 10 entries of p (8 s too) are due at 61 s. p's average is
// still 10 ms until the first 8 s attempt ends (68 s), so the hung rule
// holds every claim until then, and once the slots free they take read
// entries first: the oldest dead entry waits one more handler time.
// Before 8398587 it was claimed at the next tick and started in the first
// slot that freed (68 s). Wants it started within interval + 1 s + one
// handler time after due.
func TestReviewSched9SlowdownLooksHung(t *testing.T) {
	simTest(t)

	const interval = 2500 * time.Millisecond
	const slowFrom = 60 * time.Second
	var clk *time.Duration
	durs := map[string]time.Duration{}
	dur := func(tk *task) time.Duration {
		if d, ok := durs[tk.m.ID]; ok {
			return d
		}
		d := 10 * time.Millisecond
		if *clk >= slowFrom {
			d = 8 * time.Second
		}
		durs[tk.m.ID] = d
		return d
	}
	w, ws := p9SaturatedClk(t, 2, 8, &clk, dur, slowFrom+time.Second, 10, 120*time.Second)
	t.Logf("%v; claimed %d + %d", w, ws[0].claimed["p"], ws[1].claimed["p"])
	if bound := interval + time.Second + 8*time.Second; w.startedAt < 0 || w.startedAt > bound {
		t.Errorf("oldest dead entry started %v after due (claimed %v after); want within %v: a slowed-down partition looks hung until its first slow attempt ends", w.startedAt, w.claimedAt, bound)
	}
}

// TestReviewSched9BimodalRandomConc1: BimodalRandom with two 1-slot
// workers (jittered: no alignment of ticks with handler ends).
func TestReviewSched9BimodalRandomConc1(t *testing.T) {
	simTest(t)
	w, ws := p9Saturated(t, 2, 1, p9BimodalRandom, nil, 60*time.Second, 5, 300*time.Second)
	p9Promise(t, w, ws, 15*time.Second, "")
}
