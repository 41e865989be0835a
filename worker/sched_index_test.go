package worker

import (
	"math/rand/v2"
	"testing"
	"time"
)

// TestSchedWantIndexFaster: wantIndex.faster counts and sums the same
// members as mayBorrow's rule (avg > 2 × theirs + lendSlack) checked one by
// one, the full ones too, over random handler times, thresholds, inserts
// and removes.
func TestSchedWantIndexFaster(t *testing.T) {
	for b, d := 0, time.Duration(0); d < time.Hour; d += d/7 + 1 {
		if nb := wantBucket(d); nb < b || nb >= wantBuckets {
			t.Fatalf("wantBucket(%v) = %d after %d", d, nb, b)
		} else {
			b = nb
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	dur := func() time.Duration {
		return time.Duration(rng.Int64N(int64(10 * time.Microsecond << rng.IntN(20))))
	}
	var x wantIndex
	var in []*sstream
	for i := range 5000 {
		if len(in) > 0 && rng.IntN(3) == 0 {
			j := rng.IntN(len(in))
			x.remove(in[j])
			in[j] = in[len(in)-1]
			in = in[:len(in)-1]
		} else {
			st := &sstream{avg: dur(), occ: rng.Float64() * 4, full: rng.IntN(2) == 0, wIdx: -1}
			x.insert(st)
			in = append(in, st)
		}
		avg := dur() * 3
		n, full, occ := x.faster(avg)
		wn, wfull, wocc := 0, 0, int64(0)
		for _, c := range in {
			if avg > 2*c.avg+lendSlack {
				wn++
				wocc += c.wOcc
				if c.full {
					wfull++
				}
			}
		}
		if n != wn || full != wfull || occ != float64(wocc)/occUnit {
			t.Fatalf("op %d, %d members, avg %v: faster = %d (%d full), %.6f; one by one %d (%d full), %.6f", i, len(in), avg, n, full, occ, wn, wfull, float64(wocc)/occUnit)
		}
	}
}
