package bridge_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// TestBackpressure: no workers and a 100,000-record backlog in Kafka. Every
// stream stays at or below its cap (plus one fetch batch at most), the heap
// stays flat while the ingest is paused, and fetching resumes once a worker
// drains the streams below the low watermark (invariant 7).
func TestBackpressure(t *testing.T) {
	// The figure is 100,000; the in-process stand-ins under -race
	// move about 1,000 records/s, so they get a smaller backlog.
	n := 100_000
	if !testenv.RealKafka() || !testenv.RealRedis() {
		n = 20_000
	}
	const (
		partitions = 4
		capacity   = 2000
		low        = 1000
	)
	e := newEnv(t, partitions)
	start := time.Now()
	testenv.Produce(t, e.brokers, e.topic, 0, n)
	t.Logf("produced %d records in %v", n, time.Since(start).Round(time.Millisecond))
	cfg := e.config(t)
	cfg.PartitionCap, cfg.LowWatermark = capacity, low
	in := startIngest(t, cfg)
	ctx := context.Background()

	maxLen := func() int64 {
		var m int64
		for p := 0; p < partitions; p++ {
			l, _ := e.rdb.XLen(ctx, e.stream(p)).Result()
			m = max(m, l)
		}
		return m
	}
	// Every partition fills up to its cap and pauses.
	testenv.Eventually(t, 60*time.Second, func() bool {
		paused := 0
		for _, p := range in.Stats().Partitions {
			if p.Paused {
				paused++
			}
		}
		return paused == partitions
	}, "not every partition paused: %+v", in.Stats().Partitions)

	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	// While paused, sample the stream lengths and the heap for a while.
	limit := int64(capacity + bridge.DefaultConfig().AppendBatch)
	var peak int64
	h0 := heap()
	var hMax uint64
	appended0 := in.Stats().Appended
	for i := 0; i < 20; i++ {
		peak = max(peak, maxLen())
		hMax = max(hMax, heap())
		time.Sleep(50 * time.Millisecond)
	}
	if peak > limit {
		t.Errorf("a stream reached %d entries, want at most cap %d + one batch", peak, capacity)
	}
	if got := in.Stats().Appended; got != appended0 {
		t.Errorf("appended went from %d to %d while every partition was paused", appended0, got)
	}
	// The in-process stand-ins hold the whole backlog in this heap; only the
	// real services make the heap the ingest's own.
	if testenv.RealKafka() && testenv.RealRedis() && hMax > h0+32<<20 {
		t.Errorf("heap grew from %d to %d bytes while paused", h0, hMax)
	}
	t.Logf("paused: longest stream %d (cap %d), heap %0.1f MiB → max %0.1f MiB", peak, capacity,
		float64(h0)/(1<<20), float64(hMax)/(1<<20))

	// A worker drains each stream to below the low watermark and stops:
	// every partition resumes and, with nobody acknowledging, refills to its
	// cap and pauses again. Whatever the relative speed of worker and ingest
	// on a loaded machine (a worker that drains as fast as the ingest
	// refills never lets a partition pause twice), that sequence is
	// deterministic.
	l := newLedger()
	quota := map[int]int64{}
	for p := 0; p < partitions; p++ {
		quota[p] = e.unacked(t, p) - low + 50
	}
	e.drainQuota(t, l, quota)
	testenv.Eventually(t, 2*time.Minute, func() bool { return in.Stats().Pauses >= 2*partitions },
		"pauses = %d, want %d: each partition paused, resumed below the low watermark, and paused again at its cap",
		in.Stats().Pauses, 2*partitions)
	t.Logf("drained %d records below the low watermark (%v per partition): resumed and paused again, pauses %d",
		l.total(), quota, in.Stats().Pauses)

	// A worker drains everything.
	wctx, cancel := context.WithCancel(ctx)
	wg := e.work(wctx, t, l, 0)
	t.Cleanup(func() { cancel(); wg.Wait() })
	// Draining, the cap bounds what is not yet acknowledged; acknowledged
	// entries stay in the stream until the next commit trims them.
	var peakUnacked int64
	samples := 0
	testenv.Eventually(t, 3*time.Minute, func() bool {
		if samples++; samples%10 == 0 {
			for p := 0; p < partitions; p++ {
				peakUnacked = max(peakUnacked, e.unacked(t, p))
			}
		}
		return l.total() == n
	}, "processed %d of %d", l.total(), n)
	end := testenv.LogEnd(t, e.brokers, e.topic, partitions)
	lost, dups := l.check(end)
	if lost != 0 {
		t.Errorf("lost %d records", lost)
	}
	if peakUnacked > limit {
		t.Errorf("a stream held %d un-acknowledged entries while draining, want at most %d", peakUnacked, limit)
	}
	testenv.Eventually(t, 30*time.Second, func() bool {
		c := testenv.Committed(t, e.brokers, e.group, e.topic, partitions)
		for p := range end {
			if c[p] != end[p] {
				return false
			}
		}
		return true
	}, "commits did not reach the log end %v", end)
	st := in.Stats()
	t.Logf("drained: %d processed, %d lost, %d duplicates, most un-acknowledged in a stream %d (cap %d), pauses %d",
		l.total(), lost, dups, peakUnacked, capacity, st.Pauses)
}

// drainQuota reads and acknowledges quota[p] entries of each partition p's
// stream in group "workers", recording them in l, and returns when done.
func (e *env) drainQuota(t *testing.T, l *ledger, quota map[int]int64) {
	t.Helper()
	ctx := context.Background()
	for p, left := range quota {
		deadline := time.Now().Add(time.Minute)
		for left > 0 && time.Now().Before(deadline) {
			res, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: "c",
				Streams: []string{e.stream(p), ">"}, Count: min(left, 100), Block: 100 * time.Millisecond}).Result()
			if err != nil {
				continue
			}
			for _, s := range res {
				ids := make([]string, 0, len(s.Messages))
				for _, m := range s.Messages {
					off, err := wire.ParseID(m.ID)
					if err != nil {
						t.Fatal(err)
					}
					l.add(p, off)
					ids = append(ids, m.ID)
				}
				if err := e.rdb.XAck(ctx, e.stream(p), "workers", ids...).Err(); err != nil {
					t.Fatalf("XACK: %v", err)
				}
				left -= int64(len(ids))
			}
		}
		if left > 0 {
			t.Fatalf("partition %d: %d entries left to drain after a minute", p, left)
		}
	}
}
