package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// cmdCounter counts the start.lua calls on stream and the fields of its
// runs hash HDELed that a client sends (not the startup probe's).
type cmdCounter struct {
	stream        string
	starts, hdels *atomic.Int64
}

func (c cmdCounter) count(cmd redis.Cmder) {
	args := cmd.Args()
	switch cmd.Name() {
	case "evalsha": // each Script.Run sends it first (then EVAL on NOSCRIPT)
		if len(args) > 3 && args[1] == startScript.Hash() && args[3] == c.stream {
			c.starts.Add(1)
		}
	case "hdel":
		if len(args) < 2 || args[1] != wire.RunsKey(c.stream, DefaultGroup) {
			return
		}
		c.hdels.Add(int64(len(args) - 2)) // fields deleted
	}
}

func (c cmdCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c cmdCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		c.count(cmd)
		return err
	}
}
func (c cmdCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			c.count(cmd)
		}
		return err
	}
}

// TestFirstDeliveryCostsNoScript: an entry delivered for the first time
// (count 1) starts without start.lua and leaves no runs record, and its
// acknowledgement sends no HDEL; only this worker's own retry of the one
// failing entry goes through start.lua (and its record is deleted on ack).
// The retry's record counts the unrecorded first run: 2.
func TestFirstDeliveryCostsNoScript(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	const n = 40
	e.add(t, s, 0, n)
	ctx := context.Background()
	c := cmdCounter{stream: s, starts: &atomic.Int64{}, hdels: &atomic.Int64{}}
	rdb := redis.NewClient(&redis.Options{Addr: e.rdb.Options().Addr})
	defer rdb.Close()
	rdb.AddHook(c)
	got := newSeen()
	var (
		mu       sync.Mutex
		runsSeen = map[int64]string{} // delivery → the record seen while the handler ran
	)
	cfg := e.config(func(_ context.Context, m *Message) error {
		got.add(m)
		if m.Offset != 7 {
			return nil
		}
		v, err := e.rdb.HGet(ctx, wire.RunsKey(s, DefaultGroup), m.ID).Result()
		if errors.Is(err, redis.Nil) {
			v = "none"
		}
		mu.Lock()
		runsSeen[m.Deliveries] = v
		mu.Unlock()
		if m.Deliveries == 1 {
			return errors.New("first delivery fails")
		}
		return nil
	})
	cfg.Redis = rdb
	cfg.BackoffMin = 10 * time.Millisecond
	w := mustNew(t, cfg)
	running(t, w)
	testenv.Eventually(t, 15*time.Second, func() bool { return got.distinct() == n && e.pending(t, s, DefaultGroup) == 0 }, "entries not all handled and acknowledged")
	testenv.Eventually(t, 5*time.Second, func() bool { return c.hdels.Load() >= 1 }, "no HDEL of the retried entry's record")
	left, _ := e.rdb.HLen(ctx, wire.RunsKey(s, DefaultGroup)).Result()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d entries, 1 failing once: start.lua calls %d, fields HDELed %d, runs records left %d, record of the failing entry at its deliveries %v",
		n, c.starts.Load(), c.hdels.Load(), left, runsSeen)
	if c.starts.Load() != 1 {
		t.Errorf("start.lua called %d times, want 1 (the retry only; first deliveries start without it)", c.starts.Load())
	}
	if c.hdels.Load() != 1 {
		t.Errorf("%d fields HDELed, want 1 (the retried entry's ack only)", c.hdels.Load())
	}
	if left != 0 {
		t.Errorf("%d runs records left after all acks, want 0", left)
	}
	if runsSeen[1] != "none" || runsSeen[2] != "2" {
		t.Errorf("runs record of the failing entry: %v, want none at delivery 1 and 2 at delivery 2 (the unrecorded first run counted)", runsSeen)
	}
}

// TestUnrecordedFirstRunCostsOneRun: the under-count that the free first
// delivery allows is at most one run. A worker ran an entry's first delivery
// (count 1, no record) and died; with MaxDeliveries 2 and a handler that
// always fails, the survivor runs it exactly 2 times, then dead-letters it:
// 3 runs in all, MaxDeliveries + 1, never more.
func TestUnrecordedFirstRunCostsOneRun(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 1)
	ctx := context.Background()
	// "dead" read the entry and ran it (nothing recorded), then died.
	if err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "dead", Streams: []string{s, ">"}, Count: 1}).Err(); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int64
	cfg := e.config(func(_ context.Context, m *Message) error { runs.Add(1); return errors.New("always fails") })
	cfg.MaxDeliveries = 2
	cfg.VisibilityTimeout = time.Second
	cfg.BackoffMin = 10 * time.Millisecond
	w := mustNew(t, cfg)
	running(t, w)
	testenv.Eventually(t, 20*time.Second, func() bool { return e.pending(t, s, DefaultGroup) == 0 }, "entry still pending")
	dl, _ := e.rdb.XLen(ctx, wire.DLQKey(s)).Result()
	left, _ := e.rdb.HLen(ctx, wire.RunsKey(s, DefaultGroup)).Result()
	t.Logf("first run unrecorded (worker died), MaxDeliveries 2: survivor ran it %d times, dead letters %d, records left %d", runs.Load(), dl, left)
	if runs.Load() != 2 || dl != 1 {
		t.Errorf("survivor ran it %d times, %d dead letters; want 2 runs (MaxDeliveries + 1 = 3 with the dead worker's) and 1 dead letter", runs.Load(), dl)
	}
	if left != 0 {
		t.Errorf("%d runs records left after the dead letter, want 0", left)
	}
}

// TestRunsGCScript: runsgc.lua deletes the runs fields of entries no longer
// pending in the group (acknowledged, never delivered, not an ID) and keeps
// those of pending entries, whoever holds them, walking a large hash in
// HSCAN batches; without the group, nothing is pending.
func TestRunsGCScript(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	runs := wire.RunsKey(s, DefaultGroup)
	t.Cleanup(func() { e.rdb.Del(context.Background(), runs) })
	ctx := context.Background()
	const n = 300 // above the listpack limit: HSCAN in batches
	e.add(t, s, 0, n)
	if err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "a", Streams: []string{s, ">"}, Count: 100}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: DefaultGroup, Consumer: "b", Streams: []string{s, ">"}, Count: 100}).Err(); err != nil {
		t.Fatal(err)
	}
	// 0..199 pending (under a and b); ack the even ones; 200..299 never
	// delivered.
	for o := range n {
		e.rdb.HSet(ctx, runs, wire.EntryID(int64(o)), 2)
		if o < 200 && o%2 == 0 {
			e.rdb.XAck(ctx, s, DefaultGroup, wire.EntryID(int64(o)))
		}
	}
	e.rdb.HSet(ctx, runs, "probe", 1)
	walk := func(group string) {
		cur, rounds := "0", 0
		for {
			res, err := runsGCScript.Run(ctx, e.rdb, []string{s, runs}, group, cur, 50).Slice()
			if err != nil {
				t.Fatal(err)
			}
			cur, _ = res[0].(string)
			rounds++
			if cur == "0" || rounds > 1000 {
				return
			}
		}
	}
	walk(DefaultGroup)
	left, _ := e.rdb.HKeys(ctx, runs).Result()
	if len(left) != 100 {
		t.Errorf("%d fields left, want 100 (the odd pending entries)", len(left))
	}
	for _, id := range left {
		var o int
		if _, err := fmt.Sscanf(id, "%d-1", &o); err != nil || o >= 200 || o%2 == 0 {
			t.Errorf("field %s left: its entry is not pending", id)
		}
	}
	walk("nosuchgroup")
	if n, _ := e.rdb.HLen(ctx, runs).Result(); n != 0 {
		t.Errorf("%d fields left after a walk with a group that does not exist, want 0", n)
	}
}
