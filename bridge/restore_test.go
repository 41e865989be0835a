package bridge_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// reclaimer stands in for a worker's visibility timeout: every interval it
// takes over the entries idle longer than minIdle and acks them after
// recording them, as a worker that processed them again would.
func (e *env) reclaimer(ctx context.Context, l *ledger, minIdle time.Duration) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			time.Sleep(200 * time.Millisecond)
			for p := 0; p < e.partitions; p++ {
				msgs, _, err := e.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{Stream: e.stream(p), Group: "workers",
					Consumer: "reclaimer", MinIdle: minIdle, Start: "0", Count: 1000}).Result()
				if err != nil {
					continue
				}
				ids := make([]string, 0, len(msgs))
				for _, m := range msgs {
					if off, err := parseOffset(m.ID); err == nil {
						l.add(p, off)
					}
					ids = append(ids, m.ID)
				}
				if len(ids) > 0 {
					e.rdb.XAck(ctx, e.stream(p), "workers", ids...)
				}
			}
		}
	}()
	return &wg
}

// TestRedisRestoredFromOldSnapshot: Redis crashes and comes back from an
// older RDB snapshot. The streams' tops went back (the ingest fetches again
// from max(committed, top+1)) and the groups hold pending entries that were
// processed and committed since: the ingest must not trim them by the commit
// alone (invariant 4) — no pending entry may point at a deleted one — and
// nothing is lost (invariant 5).
func TestRedisRestoredFromOldSnapshot(t *testing.T) {
	const n = 20_000
	srv := testenv.StartRedisServer(t, "rdb")
	e, in, l, watch := newRedisScenario(t, srv, n, true)
	ctx := context.Background()

	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() >= n/5 }, "processed %d", l.total())
	if err := e.rdb.Save(ctx).Err(); err != nil {
		t.Fatalf("SAVE: %v", err)
	}
	saved := l.total()
	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() >= saved+n/5 }, "processed %d", l.total())
	srv.Crash(t)
	srv.Start(t)
	t.Logf("snapshot taken at %d processed; crashed at %d; restored", saved, l.total())

	// Until the reclaimer takes them (3 s idle), the restored pending entries
	// sit below the commit; every one must still be in its stream.
	checks, stale := 0, 0
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		for p := 0; p < e.partitions; p++ {
			pend, err := e.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: e.stream(p), Group: "workers", Start: "-", End: "+", Count: 10000}).Result()
			if err != nil {
				continue
			}
			stale += len(pend)
			for _, pe := range pend {
				msgs, err := e.rdb.XRange(ctx, e.stream(p), pe.ID, pe.ID).Result()
				checks++
				if err != nil || len(msgs) > 0 {
					continue
				}
				// Gone from the stream: a violation only if it is still
				// pending. A worker may have acked it since XPENDING
				// listed it, and the ingest trimmed it, rightly; a
				// trimmed entry can never become pending again.
				still, err := e.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: e.stream(p), Group: "workers", Start: pe.ID, End: pe.ID, Count: 1}).Result()
				if err == nil && len(still) > 0 {
					t.Errorf("partition %d: pending entry %s was trimmed from the stream", p, pe.ID)
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if stale == 0 {
		t.Errorf("the snapshot held no pending entries: the test did not test trimming")
	}
	lost, dups := e.waitDone(t, l, 2*time.Minute)
	watch.finish(t)
	st := in.Stats()
	if st.Losses == 0 {
		t.Errorf("the ingest did not notice the stream tops going back")
	}
	t.Logf("restored from an old snapshot: %d records, lost=%d duplicates=%d, %d pending-entry checks, losses seen=%d",
		n, lost, dups, checks, st.Losses)
}

// TestEvictionPolicyRefused: a Redis that may evict keys is refused unless
// AllowEviction is set (invariant 5).
func TestEvictionPolicyRefused(t *testing.T) {
	srv := testenv.StartRedisServer(t, "none")
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	cfg := bridge.Config{Brokers: []string{"127.0.0.1:1"}, Topics: []string{"t"}, Redis: rdb}
	in, err := bridge.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := in.Run(rctx); !errors.Is(err, bridge.ErrEvictionPolicy) {
		t.Fatalf("Run with allkeys-lru = %v, want ErrEvictionPolicy", err)
	}
	// Allowed: Run goes on (and keeps retrying the unreachable Kafka) until
	// cancelled, then returns nil.
	cfg.AllowEviction = true
	in, _ = bridge.New(cfg)
	rctx, cancel = context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := in.Run(rctx); err != nil {
		t.Fatalf("Run with AllowEviction = %v, want nil after cancel", err)
	}
}

// TestGlobalCap: the backlog summed over all partitions of an ingest stays
// at the global cap (plus one append batch per partition at most).
func TestGlobalCap(t *testing.T) {
	const partitions = 4
	e := newEnv(t, partitions)
	testenv.Produce(t, e.brokers, e.topic, 0, 20_000)
	cfg := e.config(t)
	cfg.PartitionCap, cfg.GlobalCap = 2000, 3000
	in := startIngest(t, cfg)
	ctx := context.Background()
	sum := func() int64 {
		var s int64
		for p := 0; p < partitions; p++ {
			n, _ := e.rdb.XLen(ctx, e.stream(p)).Result()
			s += n
		}
		return s
	}
	testenv.Eventually(t, 60*time.Second, func() bool { return sum() >= 3000 && in.Stats().Appended >= 3000 },
		"backlog %d never reached the global cap", sum())
	appended := in.Stats().Appended
	peak := int64(0)
	for i := 0; i < 20; i++ {
		peak = max(peak, sum())
		time.Sleep(50 * time.Millisecond)
	}
	limit := int64(3000 + partitions*bridge.DefaultConfig().AppendBatch)
	if peak > limit {
		t.Errorf("summed backlog %d, want at most %d", peak, limit)
	}
	if got := in.Stats().Appended; got != appended {
		t.Errorf("appended %d → %d while at the global cap", appended, got)
	}
	t.Logf("global cap 3000 over %d partitions (cap 2000 each): summed backlog held at %d", partitions, peak)
}

func parseOffset(id string) (int64, error) { return wire.ParseID(id) }
