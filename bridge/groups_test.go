package bridge_test

import (
	"context"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// TestRollingRestartAddsGroup (issue 7 point 2): a rolling restart adds a
// fan-out group. Ingest A runs with --worker-groups workers; ingest B joins
// with workers,audit and creates audit on the partitions it is assigned, then
// leaves, and A takes them back. A must not commit, nor trim, past entries
// the audit group was never delivered: every consumer group that exists on a
// stream holds its commit (invariant 2), whatever A's flag says. The audit
// group, read only at the end, gets every record from its creation on.
func TestRollingRestartAddsGroup(t *testing.T) {
	const total = 8000
	e := newEnv(t, 4)
	ctx := context.Background()
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		for from := 0; from < total; from += 500 {
			testenv.Produce(t, e.brokers, e.topic, from, 500)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	cfgA := e.config(t)
	a := startIngest(t, cfgA)
	l := e.startWork(t, 0)
	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() >= 1000 }, "processed %d", l.total())

	cfgB := e.config(t)
	cfgB.WorkerGroups = []string{"workers", "audit"}
	b := startIngest(t, cfgB)
	var owned []int
	testenv.Eventually(t, 60*time.Second, func() bool {
		owned = owned[:0]
		for _, p := range b.Stats().Partitions {
			owned = append(owned, p.Partition)
		}
		return len(owned) > 0 && len(a.Stats().Partitions)+len(owned) == e.partitions
	}, "partitions not shared: a has %d, b has %d", len(a.Stats().Partitions), len(b.Stats().Partitions))
	// Where B created audit: the first entry of the stream once it exists.
	// Nothing may be trimmed from there on (audit read nothing).
	first := map[int]int64{}
	for _, p := range owned {
		testenv.Eventually(t, 30*time.Second, func() bool {
			gs, err := e.rdb.XInfoGroups(ctx, e.stream(p)).Result()
			if err != nil {
				return false
			}
			for _, g := range gs {
				if g.Name == "audit" {
					msgs, err := e.rdb.XRangeN(ctx, e.stream(p), "-", "+", 1).Result()
					if err != nil || len(msgs) == 0 {
						return false
					}
					first[p], err = wire.ParseID(msgs[0].ID)
					return err == nil
				}
			}
			return false
		}, "ingest b did not create group audit on partition %d", p)
	}
	// Entries committed before audit existed are not audit's to hold: the
	// commit must not move past max(that commit, audit's first entry).
	atCreation := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
	t.Logf("ingest b (workers,audit) owns partitions %v; audit created with first entries %v; committed then %v", owned, first, atCreation)
	b.stop(t)
	testenv.Eventually(t, 60*time.Second, func() bool { return len(a.Stats().Partitions) == e.partitions },
		"a did not take back every partition: %d", len(a.Stats().Partitions))

	// Everything produced and processed by workers; A observes a few more
	// times (each a chance to commit or trim past audit).
	<-produced
	end := testenv.LogEnd(t, e.brokers, e.topic, e.partitions)
	var want int64
	for _, v := range end {
		want += v
	}
	testenv.Eventually(t, 2*time.Minute, func() bool { return int64(l.total()) >= want }, "workers processed %d of %d", l.total(), want)
	since := time.Now().Add(5 * cfgA.CommitInterval)
	testenv.Eventually(t, 30*time.Second, func() bool {
		for _, p := range a.Stats().Partitions {
			if !p.Updated.After(since) {
				return false
			}
		}
		return true
	}, "ingest a stopped observing")
	committed := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
	for p := range end {
		if _, audited := first[p]; audited {
			if hold := max(first[p], atCreation[p]); committed[p] > hold {
				t.Errorf("partition %d: committed %d, past %d, though audit read nothing (its first entry %d, committed at its creation %d)",
					p, committed[p], hold, first[p], atCreation[p])
			}
			if offs := e.streamOffsets(t, p); len(offs) == 0 || offs[0] > first[p] {
				t.Errorf("partition %d: entries audit never read were trimmed (stream starts at %v, audit's first entry %d)", p, offs[:min(1, len(offs))], first[p])
			}
		} else if committed[p] != end[p] {
			t.Errorf("partition %d (no audit group): committed %d, want the log end %d", p, committed[p], end[p])
		}
	}

	// The audit workers start: they get every record from the group's
	// creation on, and the commits then reach the log end.
	la := newLedger()
	actx, acancel := context.WithCancel(ctx)
	awg := e.workGroup(actx, t, la, 0, "audit", owned)
	defer func() { acancel(); awg.Wait() }()
	auditWant := 0
	for p, f := range first {
		auditWant += int(end[p] - f)
	}
	testenv.Eventually(t, 2*time.Minute, func() bool { return la.total() >= auditWant }, "audit processed %d of %d", la.total(), auditWant)
	testenv.Eventually(t, 30*time.Second, func() bool {
		return sameOffsets(testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions), end)
	}, "commits did not reach the log end %v once audit caught up", end)
	lostAudit := 0
	for p, f := range first {
		for off := f; off < end[p]; off++ {
			if la.seen[p][off] == 0 {
				lostAudit++
			}
		}
	}
	if lostAudit != 0 {
		t.Errorf("group audit lost %d records", lostAudit)
	}
	lost, _ := l.check(end)
	if lost != 0 {
		t.Errorf("group workers lost %d records", lost)
	}
	t.Logf("rolling restart adding group audit on partitions %v: commits held at %v until audit read %d records; lost in audit=%d, in workers=%d",
		owned, committed, la.total(), lostAudit, lost)
}
