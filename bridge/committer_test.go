package bridge

import (
	"log/slog"
	"testing"
)

// TestCommitterNeverGoesBack: a lower offer made while a higher commit is in
// flight (a group recreated at 0, a failover to a replica behind) must not be
// committed after it (invariant 3).
func TestCommitterNeverGoesBack(t *testing.T) {
	in := &Ingest{log: slog.New(slog.DiscardHandler)}
	var committed []int64
	c := &committer{in: in, want: map[tp]int64{}, done: map[tp]int64{}}
	p := tp{"t", 0}
	c.commit = func(o map[string]map[int]int64) error {
		committed = append(committed, o["t"][0])
		if len(committed) == 1 {
			c.offer(p, 5) // lower, while 10 is in flight
		}
		return nil
	}
	c.offer(p, 10)
	c.flush()
	c.flush()
	c.offer(p, 7) // lower than what was committed
	c.flush()
	c.offer(p, 12)
	c.flush()
	want := []int64{10, 12}
	if len(committed) != len(want) || committed[0] != want[0] || committed[1] != want[1] {
		t.Errorf("commits %v, want %v", committed, want)
	}
	if off, _ := c.committed(p); off != 12 {
		t.Errorf("committed() = %d, want 12", off)
	}
}
