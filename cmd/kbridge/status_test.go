package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
	"github.com/kbridge/kbridge/worker"
)

// TestStatusMatchesKafkaAndRedis runs an ingest and a worker, leaves five
// entries of partition 0 pending with a consumer that never acknowledges
// them, and compares "kbridge status --json" with the state read directly
// from Kafka (log end, committed offsets) and Redis (XLEN, XPENDING): while
// the ingest runs, and after it stopped.
func TestStatusMatchesKafkaAndRedis(t *testing.T) {
	t.Log(testenv.String())
	const parts, records, stuck = 3, 300, 5
	brokers := testenv.Kafka(t)
	r := testenv.NewRedis(t)
	rdb := r.Client(t)
	topic, prefix, group := testenv.Name(t), testenv.Name(t), testenv.Name(t)
	testenv.CreateTopic(t, brokers, topic, parts)
	testenv.Produce(t, brokers, topic, 0, records)

	in, err := bridge.New(bridge.Config{
		Brokers: brokers, Topics: []string{topic}, Group: group, Redis: rdb, Prefix: prefix,
		CommitInterval: 100 * time.Millisecond, AllowEviction: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	bg := context.Background()
	ctx, stopIngest := context.WithCancel(bg)
	ingestDone := make(chan error, 1)
	go func() { ingestDone <- in.Run(ctx) }()
	defer func() { stopIngest(); <-ingestDone }()

	// A consumer takes the first entries of partition 0 and never acks them.
	s0 := wire.StreamKey(prefix, topic, 0)
	testenv.Eventually(t, 30*time.Second, func() bool { return rdb.XLen(bg, s0).Val() >= stuck }, "stream %s not filled", s0)
	if err := rdb.XReadGroup(bg, &redis.XReadGroupArgs{Group: "workers", Consumer: "stuck-consumer", Streams: []string{s0, ">"}, Count: stuck}).Err(); err != nil {
		t.Fatal(err)
	}
	// A worker processes everything else.
	var handled atomic.Int64
	w, err := worker.New(worker.Config{Redis: rdb, Prefix: prefix, Consumer: "good-worker", DiscoveryInterval: 100 * time.Millisecond,
		Handler: func(context.Context, *worker.Message) error { handled.Add(1); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	wctx, stopWorker := context.WithCancel(context.Background())
	workerDone := make(chan error, 1)
	go func() { workerDone <- w.Run(wctx) }()
	defer func() { stopWorker(); <-workerDone }()
	testenv.Eventually(t, 60*time.Second, func() bool { return handled.Load() == records-stuck }, "handled %d of %d", handled.Load(), records-stuck)

	logEnd := testenv.LogEnd(t, brokers, topic, parts)
	// Commits: partition 0 held at the stuck consumer's first entry, the
	// others at the log end.
	testenv.Eventually(t, 30*time.Second, func() bool {
		c := testenv.Committed(t, brokers, group, topic, parts)
		first, _ := wire.ParseID(rdb.XPendingExt(bg, &redis.XPendingExtArgs{Stream: s0, Group: "workers", Start: "-", End: "+", Count: 1}).Val()[0].ID)
		// and the streams of the committed partitions trimmed (the trim
		// follows the commit): status and the checks below read a still
		// state, not one between the two
		trimmed := rdb.XLen(bg, wire.StreamKey(prefix, topic, 1)).Val() == 0 && rdb.XLen(bg, wire.StreamKey(prefix, topic, 2)).Val() == 0
		return c[0] == first && c[1] == logEnd[1] && c[2] == logEnd[2] && trimmed
	}, "commits and trims did not settle")

	statusArgs := []string{"--redis-url", "redis://" + r.Addr + "/0", "--prefix", prefix, "status", "--brokers", strings.Join(brokers, ","), "--group", group, "--json"}
	get := func() statusReport {
		t.Helper()
		out, errs, code := runCLI(t, statusArgs...)
		if code != 0 {
			t.Fatalf("kbridge status: exit %d\n%s\n%s", code, out, errs)
		}
		var rep statusReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("status --json: %v\n%s", err, out)
		}
		return rep
	}
	check := func(rep statusReport) {
		t.Helper()
		if len(rep.Partitions) != parts {
			t.Fatalf("status shows %d partitions, want %d: %+v", len(rep.Partitions), parts, rep)
		}
		committed := testenv.Committed(t, brokers, group, topic, parts)
		for i, p := range rep.Partitions {
			stream := wire.StreamKey(prefix, topic, i)
			xlen := rdb.XLen(bg, stream).Val()
			var pending int64
			if xp, err := rdb.XPending(bg, stream, "workers").Result(); err == nil {
				pending = xp.Count
			}
			if p.Topic != topic || p.Partition != i || p.Stream != stream {
				t.Errorf("partition %d is %s/%d %s", i, p.Topic, p.Partition, p.Stream)
			}
			if p.Committed != committed[i] || p.LogEnd != logEnd[i] || p.KafkaLag != logEnd[i]-committed[i] {
				t.Errorf("%s/%d: committed %d log end %d lag %d; Kafka says committed %d log end %d",
					topic, i, p.Committed, p.LogEnd, p.KafkaLag, committed[i], logEnd[i])
			}
			if p.Length != xlen || p.Pending != pending || p.Top != logEnd[i]-1 {
				t.Errorf("%s/%d: length %d pending %d top %d; Redis says XLEN %d, XPENDING %d, top %d",
					topic, i, p.Length, p.Pending, p.Top, xlen, pending, logEnd[i]-1)
			}
			if p.Backlog != logEnd[i]-committed[i] {
				t.Errorf("%s/%d: backlog %d, want %d (log end - committed)", topic, i, p.Backlog, logEnd[i]-committed[i])
			}
		}
		p0 := rep.Partitions[0]
		if p0.Oldest == nil || p0.Oldest.Consumer != "stuck-consumer" || p0.Oldest.Offset != committed[0] || p0.Oldest.Deliveries != 1 || p0.Pending != stuck {
			t.Errorf("partition 0: pending %d, oldest %+v; want %d pending, the oldest at the commit %d held by stuck-consumer", p0.Pending, p0.Oldest, stuck, committed[0])
		}
		if rep.Totals.Pending != stuck || len(rep.Errors) > 0 {
			t.Errorf("totals %+v, errors %v", rep.Totals, rep.Errors)
		}
	}

	rep := get()
	check(rep)
	for i, p := range rep.Partitions {
		if p.Ingest == nil || p.Ingest.Owner == "" || p.Ingest.Paused {
			t.Errorf("partition %d: ingest status %+v, want the running ingest's (not paused)", i, p.Ingest)
		}
	}
	out, _, code := runCLI(t, statusArgs[:len(statusArgs)-1]...)
	t.Logf("kbridge status (ingest running):\n%s", out)
	if code != 0 || !strings.Contains(out, "stuck-consumer") || !strings.Contains(out, "COMMITTED") {
		t.Errorf("table output (exit %d) lacks the header or the stuck consumer", code)
	}

	// With the ingest down, Kafka and Redis alone give the same numbers.
	stopIngest()
	if err := <-ingestDone; err != nil {
		t.Fatal(err)
	}
	ingestDone <- nil
	check(get())
}

// TestStatusNothingRegistered: an empty Redis is not an error.
func TestStatusNothingRegistered(t *testing.T) {
	brokers := testenv.Kafka(t)
	r := testenv.NewRedis(t)
	out, errs, code := runCLI(t, "--redis-url", "redis://"+r.Addr+"/0", "--prefix", testenv.Name(t), "status", "--brokers", strings.Join(brokers, ","))
	if code != 0 || !strings.Contains(out, "no partitions") {
		t.Errorf("exit %d, output %q %q; want 0 and a hint", code, out, errs)
	}
}

// TestStatusShowsStall (issue 7 point 7): a partition the ingest stalled
// shows STALLED in the table and the reason below it, and in --json.
func TestStatusShowsStall(t *testing.T) {
	brokers := testenv.Kafka(t)
	r := testenv.NewRedis(t)
	rdb := r.Client(t)
	ctx := context.Background()
	topic, prefix := testenv.Name(t), testenv.Name(t)
	testenv.CreateTopic(t, brokers, topic, 1)
	key := wire.StreamKey(prefix, topic, 0)
	rdb.SAdd(ctx, wire.RegistryKey(prefix), key)
	rdb.XGroupCreateMkStream(ctx, key, "workers", "0")
	const reason = "stream top 199 is above what this ingest appended (99): entry 199-1 was not written by kbridge"
	rdb.HSet(ctx, wire.StatusKey(key), bridge.StatusStalled, reason, bridge.StatusOwner, "host:1", bridge.StatusUpdatedMs, time.Now().UnixMilli())
	args := []string{"--redis-url", "redis://" + r.Addr, "--prefix", prefix, "status", "--brokers", strings.Join(brokers, ","), "--topics", topic}
	out, errs, code := runCLI(t, args...)
	// Exit 1 is fine: the group has no commit yet (a warning of its own).
	if code > 1 || !strings.Contains(out, fmt.Sprintf("STALLED %s/0: %s", topic, reason)) {
		t.Errorf("status: exit %d, stderr %q, stdout:\n%s\nwant STALLED and the reason", code, errs, out)
	}
	out, _, _ = runCLI(t, append(args, "--json")...)
	var rep statusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Partitions) != 1 || rep.Partitions[0].Ingest == nil || rep.Partitions[0].Ingest.Stalled != reason {
		t.Errorf("status --json: %v, %+v; want the stall reason", err, rep.Partitions)
	}
}
