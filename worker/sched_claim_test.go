package worker

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// TestSchedClaimRoom: how many reclaimed entries of a stream a reclaim
// round may claim (claimRoom): what the stream starts within maxAge at its
// share, at least what it starts at once; before it is timed, what it
// starts at once; less what it holds reclaimed and unstarted.
func TestSchedClaimRoom(t *testing.T) {
	simTest(t)
	const age = 5 * time.Second
	// slowBesideFast times a 500 ms stream while a 1 ms one keeps slots
	// busy, and classifies them (the reader's round): the 500 ms one is
	// slow, its share one slot of 16.
	slowBesideFast := func(sim *schedSim) {
		sim.s.setStreams([]string{"fast", "x"})
		sim.read("x", 1)
		for sim.done["x"] == 0 {
			if sim.s.queued < 16 {
				sim.read("fast", 16)
			}
			sim.step()
		}
		sim.s.wanted(false)
		sim.s.endRead()
	}
	cases := []struct {
		name   string
		conc   int
		maxAge time.Duration
		setup  func(sim *schedSim)
		want   int
	}{
		{"no maxAge: no limit", 4, 0, func(sim *schedSim) { sim.s.setStreams([]string{"x"}) }, math.MaxInt},
		{"untimed, alone: its share", 4, age, func(sim *schedSim) { sim.s.setStreams([]string{"x"}) }, 4},
		{"untimed, 3 of 4 running: what it starts at once", 4, age, func(sim *schedSim) {
			sim.s.setStreams([]string{"x"})
			sim.read("x", 3)
		}, 1},
		{"untimed, share full: one", 4, age, func(sim *schedSim) {
			sim.s.setStreams([]string{"x"})
			sim.read("x", 4)
		}, 1},
		{"timed 500 ms alone: 4 slots x 5 s / 500 ms", 4, age, func(sim *schedSim) {
			sim.s.setStreams([]string{"x"})
			sim.read("x", 4)
			sim.step()
		}, 40},
		{"timed 500 ms, 6 reclaimed held: 4 start, 2 unstarted count", 4, age, func(sim *schedSim) {
			sim.s.setStreams([]string{"x"})
			sim.read("x", 1)
			sim.step()
			ts := make([]*task, 6)
			for i := range ts {
				ts[i] = &task{m: &Message{Stream: "x", ID: fmt.Sprint(i)}}
			}
			sim.s.pushUrgent(ts)
		}, 38},
		{"500 ms beside 1 ms: share 1 x 5 s / 500 ms", 16, age, slowBesideFast, 10},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sim := farSim(c.conc, c.conc, map[string]time.Duration{"x": 500 * time.Millisecond, "fast": time.Millisecond})
			sim.s.maxAge = c.maxAge
			c.setup(sim)
			if got := sim.s.claimRoom("x"); got != c.want {
				t.Errorf("claimRoom = %d; want %d", got, c.want)
			}
		})
	}
}

// TestSchedClaimRoomDelaysNoHandling: claiming a stream's dead entries no
// faster than it starts them (claimRoom) leaves the dead worker's pending
// list later, but starts none of them later. Review 4's case (its rig,
// TestReviewSched4ReclaimCapDelaysDeadEntries, has no visibility timeout,
// so no claim limit): one worker of 16 slots, read-ahead 8, saturated by
// backlogs; a dead worker's 24 entries of a 500 ms partition beside a 1 ms
// one (share 1), or of one of 16 partitions of 100 ms. With a visibility
// timeout of 10 s (maxAge 5 s) the last is claimed 8.7 s / 9.2 s after due
// for a 1 s / 2.5 s reclaim interval (0.71 s / 1.71 s without the limit),
// and all 24 have started 12.71 s / 13.71 s after due either way.
func TestSchedClaimRoomDelaysNoHandling(t *testing.T) {
	simTest(t)
	eq := map[string]time.Duration{}
	for i := range 16 {
		eq[fmt.Sprintf("s%02d", i)] = 100 * holMs
	}
	cases := []struct {
		name string
		dur  map[string]time.Duration
		dead string
	}{
		{"slow500ms", map[string]time.Duration{"fast": holMs, "slow": 500 * holMs}, "slow"},
		{"equal100ms-16", eq, "s00"},
	}
	// run returns when the last dead entry was claimed and when all had
	// started, after they were due (-1: not within 30 s).
	run := func(dur map[string]time.Duration, dead string, maxAge, interval time.Duration) (claimed, started time.Duration) {
		r := newHolRig(16, 8, dur)
		r.sim.s.maxAge = maxAge
		var keys []string
		for k := range dur {
			keys = append(keys, k)
			r.backlog[k] = 1000000
		}
		r.sim.s.setStreams(keys)
		r.kicked()
		dueAt := 3*time.Second + 300*holMs
		x := newRecRig(r, interval, dueAt, map[string]int{dead: 24})
		started = -1
		for end := dueAt; end < dueAt+30*time.Second && started < 0; end += 10 * time.Millisecond {
			x.run(end)
			s := r.sim.s
			s.mu.Lock()
			if x.left() == 0 && s.parked == 0 && s.reclaimQ == 0 {
				started = r.sim.now - dueAt
			}
			s.mu.Unlock()
		}
		claimed = -1
		if x.doneAt >= 0 {
			claimed = x.doneAt - dueAt
		}
		return claimed, started
	}
	for _, c := range cases {
		for _, interval := range []time.Duration{time.Second, 2500 * holMs} {
			t.Run(fmt.Sprintf("%s-interval%v", c.name, interval), func(t *testing.T) {
				c0, s0 := run(c.dur, c.dead, 0, interval)
				c1, s1 := run(c.dur, c.dead, 5*time.Second, interval)
				t.Logf("24 dead entries of %s: without the claim limit all claimed %v and started %v after due; with it (maxAge 5 s) claimed %v, started %v", c.dead, c0, s0, c1, s1)
				if s0 < 0 || s1 < 0 || s1 > s0+100*time.Millisecond {
					t.Errorf("with the claim limit the dead entries all started %v after due; without it %v (want no later)", s1, s0)
				}
			})
		}
	}
}
