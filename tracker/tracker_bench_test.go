package tracker

import "testing"

// BenchmarkObserve is the tracker's share of one commit observation: the
// decision from a snapshot of a stream with two worker groups (run for every
// partition every commit interval, so it bounds the cost of idle partitions
// on the ingest's side).
func BenchmarkObserve(b *testing.B) {
	p := NewPartition(None, None)
	if _, err := p.Position(func() (int64, error) { return 0, nil }); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		top := int64(i + 1000)
		p.MarkAppended(top)
		d := p.Observe(Observation{Exists: true, Top: top, Length: 1000, Groups: []Group{
			{Name: "a", Pending: 10, LowestPending: int64(i + 5), NextUndelivered: int64(i + 500)},
			{Name: "b", Pending: 0, LowestPending: None, NextUndelivered: None},
		}})
		if d.Lost {
			b.Fatalf("lost at %d: %+v", i, d)
		}
		if d.ShouldCommit {
			p.MarkCommitted(d.Commit)
		}
	}
}

// BenchmarkFrontier is the frontier over eight groups (fan-out).
func BenchmarkFrontier(b *testing.B) {
	o := Observation{Exists: true, Top: 1 << 20, Length: 1000}
	for i := range 8 {
		o.Groups = append(o.Groups, Group{Name: string(rune('a' + i)), Pending: 3, LowestPending: int64(1<<20 - 100 + i), NextUndelivered: None})
	}
	b.ReportAllocs()
	for b.Loop() {
		if f, ok := o.Frontier(); !ok || f != 1<<20-100 {
			b.Fatalf("frontier %d %v", f, ok)
		}
	}
}
