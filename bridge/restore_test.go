package bridge_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// reclaimer stands in for a worker's visibility timeout: every interval it
// takes over the entries idle longer than minIdle and acks them after
// recording them, as a worker that processed them again would. It does
// nothing while hold is true.
func (e *env) reclaimer(ctx context.Context, l *ledger, minIdle time.Duration, hold *atomic.Bool) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			time.Sleep(200 * time.Millisecond)
			if hold.Load() {
				continue
			}
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

// goneScript lists, in one atomic step, the pending entries of a group
// (KEYS[1] stream, ARGV[1] group) and those of them no longer in the stream:
// {pending IDs, gone IDs}. Read in two round trips, an entry acknowledged
// and then trimmed between the two would look like a pending entry trimmed.
var goneScript = redis.NewScript(`
local pending, gone = {}, {}
for _, pe in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 10000)) do
  table.insert(pending, pe[1])
  if #redis.call('XRANGE', KEYS[1], pe[1], pe[1]) == 0 then table.insert(gone, pe[1]) end
end
return {pending, gone}
`)

// TestRedisRestoredFromOldSnapshot: Redis crashes and comes back from an
// older RDB snapshot. The streams' tops went back (the ingest fetches again
// from max(committed, top+1)) and the groups hold pending entries that were
// processed and committed since: the ingest must not trim them by the commit
// alone (invariant 4) — no pending entry may point at a deleted one — and
// nothing is lost (invariant 5).
func TestRedisRestoredFromOldSnapshot(t *testing.T) {
	const n = 20_000
	srv := testenv.StartRedisServer(t, "rdb")
	var hold atomic.Bool
	e, in, l, watch := newRedisScenario(t, srv, n, &hold)
	ctx := context.Background()

	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() >= n/5 }, "processed %d", l.total())
	if err := e.rdb.Save(ctx).Err(); err != nil {
		t.Fatalf("SAVE: %v", err)
	}
	saved := l.total()
	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() >= saved+n/5 }, "processed %d", l.total())
	// The reclaimer holds off until the check below is done: an RDB keeps
	// each pending entry's delivery time, so the restored entries are idle
	// since before the snapshot and would be taken (and acknowledged, and
	// then rightly trimmed) at once.
	hold.Store(true)
	srv.Crash(t)
	srv.Start(t)
	committed := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
	t.Logf("snapshot taken at %d processed; crashed at %d; restored; committed %v", saved, l.total(), committed)

	// The restored pending entries sit below the commit; while nobody
	// acknowledges them, every one must still be in its stream.
	checks, stale := 0, 0
	trimmed := map[string]bool{}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		for p := 0; p < e.partitions; p++ {
			v, err := goneScript.Run(ctx, e.rdb, []string{e.stream(p)}, "workers").Slice()
			if err != nil || len(v) != 2 {
				continue
			}
			pending, _ := v[0].([]any)
			gone, _ := v[1].([]any)
			for _, id := range pending {
				checks++
				if off, err := parseOffset(fmt.Sprint(id)); err == nil && off < committed[p] {
					stale++
				}
			}
			for _, id := range gone {
				if k := fmt.Sprint(p, id); !trimmed[k] {
					trimmed[k] = true
					t.Errorf("partition %d: pending entry %v was trimmed from the stream", p, id)
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	hold.Store(false)
	if stale == 0 {
		t.Errorf("no pending entry below the commit after the restore: the test did not test trimming")
	}
	lost, dups := e.waitDone(t, l, 2*time.Minute)
	watch.finish(t)
	st := in.Stats()
	if st.Losses == 0 {
		t.Errorf("the ingest did not notice the stream tops going back")
	}
	t.Logf("restored from an old snapshot: %d records, lost=%d duplicates=%d, %d pending-entry checks (%d below the commit), losses seen=%d",
		n, lost, dups, checks, stale, st.Losses)
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
