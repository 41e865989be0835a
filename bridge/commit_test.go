package bridge_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestOutOfOrderAcks: 1,000 records acked in random order. The committed
// offset, sampled throughout, never passes the lowest un-acked offset, equals
// it once the ingest has had a commit interval to see the acks, and ends at
// the log end (invariants 2 and 3).
func TestOutOfOrderAcks(t *testing.T) {
	const n = 1000
	e := newEnv(t, 1)
	testenv.Produce(t, e.brokers, e.topic, 0, n)
	startIngest(t, e.config(t))
	ctx := context.Background()
	key := e.stream(0)

	// Read every entry into the group without acking.
	var ids []string
	testenv.Eventually(t, 60*time.Second, func() bool {
		res, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: "w",
			Streams: []string{key, ">"}, Count: 500, Block: 50 * time.Millisecond}).Result()
		if err == nil {
			for _, m := range res[0].Messages {
				ids = append(ids, m.ID)
			}
		}
		return len(ids) == n
	}, "read %d entries, want %d", len(ids), n)

	// lowest is the lowest un-acked offset; the sampler checks the commit
	// against it continuously.
	acked := make([]bool, n)
	var mu sync.Mutex
	lowest := func() int64 {
		mu.Lock()
		defer mu.Unlock()
		for i, a := range acked {
			if !a {
				return int64(i)
			}
		}
		return n
	}
	var samples, violations atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		prev := int64(-1)
		for {
			select {
			case <-stop:
				return
			default:
			}
			c := e.committed(t, 0) // read the commit first, then the truth
			low := lowest()
			samples.Add(1)
			if c > low || c < prev {
				violations.Add(1)
				t.Errorf("committed %d: lowest un-acked %d, previous commit %d", c, low, prev)
			}
			prev = c
			time.Sleep(10 * time.Millisecond)
		}
	}()

	order := rand.Perm(n)
	equalChecks := 0
	for start := 0; start < n; start += 50 {
		for _, i := range order[start : start+50] {
			if err := e.rdb.XAck(ctx, key, "workers", ids[i]).Err(); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			acked[i] = true
			mu.Unlock()
		}
		want := lowest()
		testenv.Eventually(t, 10*time.Second, func() bool { return e.committed(t, 0) == want },
			"committed %d, want the lowest un-acked offset %d", e.committed(t, 0), want)
		equalChecks++
	}
	close(stop)
	<-sampled
	end := testenv.LogEnd(t, e.brokers, e.topic, 1)[0]
	if got := e.committed(t, 0); got != end {
		t.Errorf("final commit %d, want the log end %d", got, end)
	}
	t.Logf("acked %d records in random order; %d commit samples, %d equality checks, %d violations; final commit %d = log end %d",
		n, samples.Load(), equalChecks, violations.Load(), e.committed(t, 0), end)
}
