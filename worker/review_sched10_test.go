package worker

// Review 10: b697b08 (full only when the COUNT covered what the stream is
// owed; hot COUNT at least starvedOf; a starved read for the free slots
// plus the lent ones, within Concurrency + ReadAhead − queued −
// reclaiming; the other hot non-slow streams with nothing queued read
// along). Simulated clock: holRig / schedSim (fetch.go's read loop, a read
// round trip of 200 µs).

import (
	"fmt"
	"testing"
	"time"
)

// idleWakeRig: one 100 µs stream whose producer appends rate entries/s
// (kept up with: under its share, nothing queued a round trip after each
// read), beside nIdle idle 1 ms streams that get one entry each at wakeAt.
// It returns how long after wakeAt the first and the last of those entries
// were read (-1: not by end), and the fast stream's rate.
func idleWakeRig(ra, nIdle int, rate float64, mid time.Duration, wakeAt, end time.Duration) (first, last time.Duration, fast float64, r *holRig) {
	dur := map[string]time.Duration{"f": 100 * time.Microsecond}
	keys := []string{"f"}
	if mid > 0 {
		dur["mid"] = mid
	}
	for i := range nIdle {
		k := fmt.Sprint("i", i)
		dur[k] = holMs
		keys = append(keys, k)
	}
	r = newHolRig(16, ra, dur)
	r.rate["f"] = rate
	if mid > 0 {
		r.backlog["mid"] = 100000000
		keys = append(keys, "mid")
	}
	r.sim.s.setStreams(keys)
	r.kicked()
	r.run(wakeAt)
	idle := keys[1 : 1+nIdle]
	for _, k := range idle {
		r.backlog[k] = r.readN[k] + 1
	}
	first, last = -1, -1
	step := time.Millisecond
	for t := wakeAt + step; t <= end; t += step {
		r.run(t)
		n := 0
		for _, k := range idle {
			if r.avail(k) == 0 {
				n++
			}
		}
		if n > 0 && first < 0 {
			first = t - wakeAt
		}
		if n == nIdle {
			last = t - wakeAt
			break
		}
	}
	r.run(end)
	fast = float64(r.sim.done["f"]) / (rate * end.Seconds())
	return first, last, fast, r
}

// TestReviewSched10StarvedFastStreamStopsProbes: the flagged case, and a
// stall. A 100 µs stream kept up with by its producer (20,000/s: 2 slots'
// worth) beside a backlogged 3 ms or 20 ms one (not slow; equal shares, 8
// of 16) that borrows the slots the fast one leaves. The fast stream is
// under its share with nothing queued a round trip after each read, and
// its starvedRoom (the free slots plus the 6 lent out) exceeds the read
// budget at read-ahead 0 / 1: every read is a starved one, and a starved
// read turns the probe off. 1, 100 or 1,000 idle streams get one entry
// each at t = 1 s. Asked: all read within 1 s (10 probe intervals; the
// reader probes 1,000 idle streams every second at most). On b697b08^
// they are read within 3-14 ms (ra 0/1, 1/100 streams); with b697b08 none
// is read in 4 s at ra 0 and 1 (the last probe is before t = 1 s), at
// read-ahead 16 they are (the budget covers starvedRoom).
func TestReviewSched10StarvedFastStreamStopsProbes(t *testing.T) {
	simTest(t)
	for _, ra := range []int{0, 1} {
		for _, n := range []int{1, 100, 1000} {
			for _, mid := range []time.Duration{3 * holMs} {
				t.Run(fmt.Sprintf("ra%d-idle%d-mid%v", ra, n, mid), func(t *testing.T) {
					first, last, fast, r := idleWakeRig(ra, n, 20000, mid, time.Second, 5*time.Second)
					t.Logf("idle entries read: first after %v, all after %v (-1: not by 5 s); fast stream %.2f of its producer's rate; mid %d records; XREADGROUPs naming i0 %d", first, last, fast, r.sim.done["mid"], r.reads["i0"])
					if last < 0 || last > time.Second {
						t.Errorf("%d idle streams got an entry each at 1 s: first read after %v, all after %v (-1: not within 4 s), want ≤ 1 s", n, first, last)
					}
					if r.invErr != "" || r.maxQueued > 16+ra {
						t.Errorf("invariant %q; max queued %d", r.invErr, r.maxQueued)
					}
				})
			}
		}
	}
}

// TestReviewSched10KeptUpFastStreamProbes: the same where the starved
// reads do not last: without the borrowing stream (the fast stream's
// starvedRoom is the free slots, never above the budget), with read-ahead
// 16 (the budget covers it), or with a 20 ms borrower (rounds wait for its
// slots). Held: 1-104 ms for 1-1,000 streams.
func TestReviewSched10KeptUpFastStreamProbes(t *testing.T) {
	simTest(t)
	for _, c := range []struct {
		ra  int
		mid time.Duration
	}{{0, 0}, {1, 0}, {16, 0}, {16, 3 * holMs}, {0, 20 * holMs}, {1, 20 * holMs}} {
		for _, n := range []int{1, 1000} {
			ra := c.ra
			t.Run(fmt.Sprintf("ra%d-idle%d-mid%v", ra, n, c.mid), func(t *testing.T) {
				first, last, fast, r := idleWakeRig(ra, n, 20000, c.mid, time.Second, 5*time.Second)
				t.Logf("idle entries read: first after %v, all after %v; fast stream %.2f of its producer's rate", first, last, fast)
				if last < 0 || last > time.Second || fast < 0.95 {
					t.Errorf("%d idle streams: all read after %v (-1: not within 4 s), want ≤ 1 s; fast %.2f of its rate", n, last, fast)
				}
				if r.invErr != "" || r.maxQueued > 16+ra {
					t.Errorf("invariant %q; max queued %d", r.invErr, r.maxQueued)
				}
			})
		}
	}
}
