package bridge_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestBreakManyOddGroups (review of issue 7 point 2): hundreds of groups on
// a stream, some with names that mean something to Lua patterns, Redis IDs
// or the scripts' parsing ("", "%d-0", "(", "0-0", binary). Every one must
// hold the commit and the trim until it acknowledged; then the commit
// reaches the log end.
func TestBreakManyOddGroups(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	testenv.Produce(t, e.brokers, e.topic, 0, 50)
	names := []string{"%d-0", "(", "0-0", "$", "+", "-", ".*", "a\x00b", "ü", "[", "workers "}
	if e.redis.Mini == nil {
		names = append(names, "") // miniredis refuses an empty group name
	}
	for i := 0; i < 300; i++ {
		names = append(names, fmt.Sprintf("g%03d", i))
	}
	if err := e.rdb.XGroupCreateMkStream(ctx, e.stream(0), "workers", "0").Err(); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if err := e.rdb.XGroupCreate(ctx, e.stream(0), n, "0").Err(); err != nil {
			t.Fatalf("create %q: %v", n, err)
		}
	}
	in := startIngest(t, e.config(t))
	_ = in
	l := e.startWork(t, 0)
	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() == 50 }, "workers processed %d", l.total())
	time.Sleep(2 * time.Second)
	if c := e.committed(t, 0); c > 0 {
		t.Fatalf("committed %d while %d groups read nothing", c, len(names))
	}
	if offs := e.streamOffsets(t, 0); len(offs) != 50 {
		t.Fatalf("stream holds %d entries, want 50: trimmed before the other groups read", len(offs))
	}
	// Every group but the odd "(" reads and acks everything.
	read := func(g string) {
		res, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: g, Consumer: "c", Streams: []string{e.stream(0), ">"}, Count: 100}).Result()
		if err != nil {
			t.Fatalf("read %q: %v", g, err)
		}
		for _, m := range res[0].Messages {
			e.rdb.XAck(ctx, e.stream(0), g, m.ID)
		}
	}
	for _, n := range names {
		if n != "(" {
			read(n)
		}
	}
	time.Sleep(2 * time.Second)
	if c := e.committed(t, 0); c > 0 {
		t.Fatalf("committed %d while group \"(\" read nothing", c)
	}
	read("(")
	testenv.Eventually(t, 30*time.Second, func() bool { return e.committed(t, 0) == 50 }, "commit %d, want 50", e.committed(t, 0))
	testenv.Eventually(t, 30*time.Second, func() bool { return len(e.streamOffsets(t, 0)) == 0 }, "not trimmed")
}
