package tracker

import "testing"

// TestFloorNotClampedBelowItself (issue 7 point 0; found by review):
// partition.setup reads the log end (SetLogEnd) before it resolves "latest"
// (Position), so a record produced between the two ListOffsets makes the
// resolved start L exceed the log end the tracker knows. Position raises the
// log end to L: the at-once commit of the floor is L, not the older log end
// (a hand-over or a loss of Redis before the next commit would otherwise
// fetch [log end, L) — records "latest" had skipped).
func TestFloorNotClampedBelowItself(t *testing.T) {
	p := NewPartition(None, None)
	p.SetLogEnd(100)                                                  // setup: ListOffsets(latest) = 100
	off, err := p.Position(func() (int64, error) { return 105, nil }) // 5 records later
	if err != nil || off != 105 {
		t.Fatalf("Position = %d, %v", off, err)
	}
	d := p.Observe(Observation{Exists: true, Top: None, Groups: []Group{{Name: "workers", LowestPending: None, NextUndelivered: None}}})
	if !d.ShouldCommit || d.Commit != 105 {
		t.Errorf("at-once commit of the floor 105 is %d (clamped to the log end read before it)", d.Commit)
	}
}
