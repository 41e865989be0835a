package tracker

import "testing"

// TestBreakFloorClampedBelowItself (review of issue 7 point 0): partition.setup
// reads the log end (SetLogEnd) before it resolves "latest" (Position), so a
// record produced between the two ListOffsets makes the resolved start L
// exceed the log end the tracker knows. The at-once commit of the floor is
// then clamped to the older log end: the group's first commit is below the
// offset it started from, and a hand-over or a loss of Redis before the
// next commit fetches [log end, L) — records "latest" had skipped. Not a
// loss; the commit is simply not the floor it is documented to be.
func TestBreakFloorClampedBelowItself(t *testing.T) {
	p := NewPartition(None, None)
	p.SetLogEnd(100)                                                  // setup: ListOffsets(latest) = 100
	off, err := p.Position(func() (int64, error) { return 105, nil }) // 5 records later
	if err != nil || off != 105 {
		t.Fatalf("Position = %d, %v", off, err)
	}
	d := p.Observe(Observation{Exists: true, Top: None, Groups: []Group{{Name: "workers", LowestPending: None, NextUndelivered: None}}})
	if d.ShouldCommit && d.Commit != 105 {
		t.Errorf("at-once commit of the floor 105 is %d (clamped to the log end read before it)", d.Commit)
	}
}
