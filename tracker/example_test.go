package tracker_test

import (
	"fmt"

	"github.com/kbridge/kbridge/tracker"
)

// The ingest appended offsets 0..4 to a new stream. One worker group has
// read them all and acknowledged everything but offset 2: the commit stops
// at 2. When 2 is acknowledged, the commit moves to 5, the stream's top + 1.
func Example() {
	p := tracker.NewPartition(tracker.None, tracker.None) // no commit, no stream yet
	p.MarkAppended(4)                                     // XADD 0-1 ... 4-1

	d := p.Observe(tracker.Observation{
		Exists: true, Top: 4, Length: 5,
		Groups: []tracker.Group{{Name: "workers", Pending: 1, LowestPending: 2, NextUndelivered: tracker.None}},
	})
	fmt.Println("commit:", d.Commit, d.ShouldCommit, "backlog:", d.Backlog)
	p.MarkCommitted(d.Commit) // after Kafka accepted the commit
	fmt.Println("trim below:", p.TrimPoint())

	// XACK 2-1
	d = p.Observe(tracker.Observation{
		Exists: true, Top: 4, Length: 5,
		Groups: []tracker.Group{{Name: "workers", Pending: 0, LowestPending: tracker.None, NextUndelivered: tracker.None}},
	})
	fmt.Println("commit:", d.Commit, d.ShouldCommit, "backlog:", d.Backlog)
	p.MarkCommitted(d.Commit)
	fmt.Println("trim below:", p.TrimPoint(), "next fetch:", p.Start())
	// Output:
	// commit: 2 true backlog: 3
	// trim below: 2
	// commit: 5 true backlog: 0
	// trim below: 5 next fetch: 5
}

// Redis restarted empty: the stream is gone. The partition reports the loss;
// the ingest recreates the worker groups at ID 0, resets the partition to the
// new stream's top and fetches again from the commit: the records appended
// but not yet committed are delivered again rather than lost.
func ExamplePartition_Observe_lost() {
	p := tracker.NewPartition(3, 9) // committed 3; stream top 9

	d := p.Observe(tracker.Observation{Exists: false, Top: tracker.None})
	fmt.Println("lost:", d.Lost, "recreate groups:", d.RecreateGroups, "rewind:", d.Rewind)
	fmt.Println("trim below:", p.TrimPoint())

	p.Reset(tracker.None) // XGROUP CREATE ... 0 MKSTREAM: empty stream
	fmt.Println("next fetch:", p.Start())
	// Output:
	// lost: true recreate groups: true rewind: 3
	// trim below: -1
	// next fetch: 3
}

// With several worker groups (fan-out), the commit waits for the slowest.
func ExampleObservation_Frontier() {
	o := tracker.Observation{
		Exists: true, Top: 9, Length: 10,
		Groups: []tracker.Group{
			{Name: "billing", LowestPending: tracker.None, NextUndelivered: tracker.None}, // all done
			{Name: "search", LowestPending: 6, NextUndelivered: 8},                        // 6 pending
		},
	}
	f, ok := o.Frontier()
	fmt.Println(f, ok)

	o.Groups[1] = tracker.Group{Name: "search", Missing: true} // XGROUP DESTROY
	_, ok = o.Frontier()
	fmt.Println(ok)
	// Output:
	// 6 true
	// false
}
