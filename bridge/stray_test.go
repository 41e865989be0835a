package bridge_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// ackAll is a worker that acknowledges every entry of the streams in group
// "workers", whatever it holds (an entry another program wrote included),
// recording the records it could decode: the worst case for a commit that
// follows the stream.
func (e *env) ackAll(t *testing.T, l *ledger) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for p := 0; p < e.partitions; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := e.stream(p)
			for ctx.Err() == nil {
				res, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: "c",
					Streams: []string{key, ">"}, Count: 100, Block: 100 * time.Millisecond}).Result()
				if err != nil {
					if !errors.Is(err, redis.Nil) && ctx.Err() == nil {
						time.Sleep(50 * time.Millisecond)
					}
					continue
				}
				for _, m := range res[0].Messages {
					if rec, err := wire.Decode(m.Values); err == nil {
						l.add(rec.Partition, rec.Offset)
					}
					e.rdb.XAck(context.Background(), key, "workers", m.ID)
				}
			}
		}()
	}
}

// TestStrayEntryStalls (issue 7 point 7): another program writes an entry
// into a partition stream above its top, and a worker acknowledges it. The
// ingest must commit nothing beyond what it appended itself nor beyond the
// Kafka log end, stall the partition with a reason that names what it found
// (an entry not written by kbridge), show it in the status hash, keep that
// after a restart — and resume by itself once the operator removed the entry
// (runbook: XDEL, then XSETID back to the ingest's top; real Redis only).
func TestStrayEntryStalls(t *testing.T) {
	const stalledPart = 2
	e := newEnv(t, 3)
	ctx := context.Background()
	testenv.Produce(t, e.brokers, e.topic, 0, 300)
	cfg := e.config(t)
	first := startIngest(t, cfg)
	l := newLedger()
	e.ackAll(t, l)
	end := testenv.LogEnd(t, e.brokers, e.topic, e.partitions)
	testenv.Eventually(t, 60*time.Second, func() bool {
		return sameOffsets(testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions), end)
	}, "commits did not reach the log end %v", end)

	top := end[stalledPart] - 1
	strayID := wire.EntryID(top + 100)
	if err := e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: e.stream(stalledPart), ID: strayID, Values: []string{"foo", "bar"}}).Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Produce(t, e.brokers, e.topic, 300, 60)
	end2 := testenv.LogEnd(t, e.brokers, e.topic, e.partitions)
	if end2[stalledPart] == end[stalledPart] {
		t.Fatalf("no new record in partition %d: the test would test nothing", stalledPart)
	}
	stalledReason := func(in *running) string {
		for _, p := range in.Stats().Partitions {
			if p.Partition == stalledPart {
				return p.Stalled
			}
		}
		return ""
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return stalledReason(first) != "" },
		"partition %d did not stall on the stray entry %s", stalledPart, strayID)
	reason := stalledReason(first)
	for _, want := range []string{"not written by kbridge", "above what this ingest appended"} {
		if !strings.Contains(reason, want) {
			t.Errorf("stall reason %q does not say %q", reason, want)
		}
	}
	// The other partitions go on; the stalled one commits nothing more,
	// however often it observes (the worker acknowledged the stray entry).
	testenv.Eventually(t, 60*time.Second, func() bool {
		c := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
		for p := range end2 {
			if p != stalledPart && c[p] != end2[p] {
				return false
			}
		}
		return true
	}, "the other partitions did not reach the log end %v", end2)
	checkHeld := func(in *running, when string) {
		since := time.Now().Add(3 * cfg.CommitInterval)
		testenv.Eventually(t, 10*time.Second, func() bool {
			for _, p := range in.Stats().Partitions {
				if p.Partition == stalledPart {
					return p.Updated.After(since)
				}
			}
			return false
		}, "the stalled partition stopped observing")
		if c := e.committed(t, stalledPart); c != end[stalledPart] {
			t.Errorf("%s: partition %d committed %d, want %d (log end %d, stray entry %s): nothing past what the ingest appended",
				when, stalledPart, c, end[stalledPart], end2[stalledPart], strayID)
		}
		h, err := e.rdb.HGetAll(ctx, wire.StatusKey(e.stream(stalledPart))).Result()
		if err != nil || !strings.Contains(h["stalled"], "not written by kbridge") {
			t.Errorf("%s: status hash stalled=%q (%v), want the reason", when, h["stalled"], err)
		}
	}
	checkHeld(first, "running")
	first.stop(t)

	second := startIngest(t, cfg)
	testenv.Eventually(t, 60*time.Second, func() bool { return stalledReason(second) != "" },
		"after a restart, partition %d is not stalled", stalledPart)
	checkHeld(second, "after a restart")
	t.Logf("stray entry %s above top %d (log end %d): partition stalled (%s); committed held at %d",
		strayID, top, end2[stalledPart], stalledReason(second), e.committed(t, stalledPart))

	// The runbook: delete the entry and set the stream's top back.
	if err := e.rdb.XDel(ctx, e.stream(stalledPart), strayID).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.Do(ctx, "XSETID", e.stream(stalledPart), wire.EntryID(top)).Err(); err != nil {
		if e.redis.Mini != nil {
			t.Logf("miniredis has no XSETID (%v): the runbook is checked on a real Redis only", err)
			return
		}
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, func() bool {
		return sameOffsets(testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions), end2)
	}, "after the runbook, commits did not reach the log end %v", end2)
	if r := stalledReason(second); r != "" {
		t.Errorf("still stalled after the runbook: %s", r)
	}
	lost, _ := l.check(end2)
	if lost != 0 {
		t.Errorf("lost %d records", lost)
	}
	t.Logf("after XDEL + XSETID %s: the stall lifted, commits at the log end %v, lost=%d", wire.EntryID(top), end2, lost)
}
