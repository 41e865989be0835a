package bridge

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"
)

// TestCommitterNeverGoesBack: a lower offer made while a higher commit is in
// flight (a group recreated at 0, a failover to a replica behind) must not be
// committed after it (invariant 3).
func TestCommitterNeverGoesBack(t *testing.T) {
	in := &Ingest{log: slog.New(slog.DiscardHandler), cfg: Config{FinalCommitTimeout: time.Second}}
	var committed []int64
	c := &committer{in: in, want: map[tp]int64{}, done: map[tp]int64{}}
	p := tp{"t", 0}
	c.commit = func(_ context.Context, o map[tp]int64) (map[tp]error, error) {
		committed = append(committed, o[p])
		if len(committed) == 1 {
			c.offer(p, 5) // lower, while 10 is in flight
		}
		return nil, nil
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

// TestCommitterPerPartition (issue 7 point 5): a partition whose commit the
// broker refuses stays offered, and is retried; the others of the same
// request are committed (and so trimmed). A failed request commits nothing.
func TestCommitterPerPartition(t *testing.T) {
	in := &Ingest{log: slog.New(slog.DiscardHandler), cfg: Config{FinalCommitTimeout: time.Second}}
	c := &committer{in: in, want: map[tp]int64{}, done: map[tp]int64{}}
	bad, good := tp{"t", 0}, tp{"t", 1}
	var requests int
	refuse, down := true, false
	c.commit = func(_ context.Context, o map[tp]int64) (map[tp]error, error) {
		requests++
		if down {
			return nil, errors.New("coordinator unreachable")
		}
		if refuse {
			return map[tp]error{bad: errors.New("[3] Unknown Topic Or Partition")}, nil
		}
		return nil, nil
	}
	c.offer(bad, 10)
	c.offer(good, 20)
	c.flush()
	if off, ok := c.committed(good); !ok || off != 20 {
		t.Errorf("the partition the broker accepted: committed %d (%v), want 20", off, ok)
	}
	if off, ok := c.committed(bad); ok {
		t.Errorf("the refused partition counts as committed at %d", off)
	}
	down = true
	c.offer(good, 30)
	c.flush()
	if off, _ := c.committed(good); off != 20 {
		t.Errorf("a failed request moved the commit to %d, want 20", off)
	}
	down, refuse = false, false
	c.flush()
	if off, _ := c.committed(bad); off != 10 {
		t.Errorf("the refused partition was not retried: committed %d, want 10", off)
	}
	if off, _ := c.committed(good); off != 30 {
		t.Errorf("committed %d, want 30", off)
	}
	if n := in.counters.commitErrs.Load(); n != 3 {
		t.Errorf("commit errors %d, want 3 (one partition, then a request of two)", n)
	}
	t.Logf("%d requests: a refused partition retried, the other committed meanwhile", requests)
}
