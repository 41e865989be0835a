package bridge_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestRedisFull: Redis at maxmemory with noeviction refuses appends (OOM).
// The ingest must keep observing, committing and trimming while it retries,
// so the memory the workers acknowledged is freed and everything gets
// through; a retry loop around the append alone would stall for good.
func TestRedisFull(t *testing.T) {
	const n, size = 600, 20_000 // 12 MB of values into an 4 MB Redis
	srv := testenv.StartRedisServer(t, "none")
	e := newEnv(t, 2)
	e.useRedis(t, srv.Addr())
	ctx := context.Background()
	if err := e.rdb.ConfigSet(ctx, "maxmemory", "4mb").Err(); err != nil {
		t.Fatal(err)
	}
	testenv.ProduceSized(t, e.brokers, e.topic, 0, n, size)
	cfg := e.config(t)
	cfg.PartitionCap = 100_000 // no backpressure: Redis itself says full
	cfg.FetchMaxBytes = 256 << 10
	in := startIngest(t, cfg)
	testenv.Eventually(t, 60*time.Second, func() bool { return in.Stats().RedisErrors > 0 }, "Redis never said OOM")
	l := e.startWork(t, 0)
	lost, dups := e.waitDone(t, l, 2*time.Minute)
	st := in.Stats()
	t.Logf("redis at maxmemory 4mb, %d records of %d bytes: lost=%d duplicates=%d, OOM refusals retried=%d, trimmed=%d",
		n, size, lost, dups, st.RedisErrors, st.Trimmed)
}

// TestCapOfOne: the smallest cap still pauses and resumes (the low
// watermark is 0: resume once the stream is empty).
func TestCapOfOne(t *testing.T) {
	const n = 60
	e := newEnv(t, 1)
	testenv.Produce(t, e.brokers, e.topic, 0, n)
	cfg := e.config(t)
	cfg.PartitionCap = 1
	cfg.PausedPollInterval = 5 * time.Millisecond
	cfg.CommitInterval = 20 * time.Millisecond
	in := startIngest(t, cfg)
	l := e.startWork(t, 0)
	// each record waits for a commit (trims follow commits): a broker
	// slow to answer on a loaded machine (commits timing out for 30 s in
	// one CI run) stretches it
	lost, _ := e.waitDone(t, l, 3*time.Minute)
	if st := in.Stats(); st.Pauses < n/2 {
		t.Errorf("pauses = %d, want about one per record", st.Pauses)
	}
	t.Logf("cap 1: %d records, lost=%d, pauses=%d", n, lost, in.Stats().Pauses)
}

// TestTopicRecreated: the topic is deleted and created again, with fewer
// records than the stream already holds. The ingest must not treat the new
// records as duplicates of the old ones and commit old offsets to the new
// log: the partition stalls and says why.
func TestTopicRecreated(t *testing.T) {
	e := newEnv(t, 1)
	testenv.Produce(t, e.brokers, e.topic, 0, 100)
	cfg := e.config(t)
	first := startIngest(t, cfg)
	l := newLedger()
	ctx, cancel := context.WithCancel(context.Background())
	wg := e.work(ctx, t, l, 0)
	e.waitDone(t, l, time.Minute)
	first.stop(t)
	cancel()
	wg.Wait()

	cl := &kafka.Client{Addr: kafka.TCP(e.brokers...), Timeout: 10 * time.Second}
	if _, err := cl.DeleteTopics(context.Background(), &kafka.DeleteTopicsRequest{Topics: []string{e.topic}}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() bool {
		res, err := cl.CreateTopics(context.Background(), &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
			Topic: e.topic, NumPartitions: 1, ReplicationFactor: 1}}})
		return err == nil && res.Errors[e.topic] == nil
	}, "topic not recreated")
	testenv.Eventually(t, 30*time.Second, func() bool {
		return testenv.LogEnd(t, e.brokers, e.topic, 1)[0] == 0
	}, "recreated topic not ready")
	testenv.Produce(t, e.brokers, e.topic, 1000, 10)
	before := testenv.Committed(t, e.brokers, e.group, e.topic, 1)[0]

	second := startIngest(t, cfg)
	var stalled string
	testenv.Eventually(t, 60*time.Second, func() bool {
		for _, p := range second.Stats().Partitions {
			stalled = p.Stalled
		}
		return stalled != ""
	}, "the partition did not stall: %+v", second.Stats().Partitions)
	if !strings.Contains(stalled, "recreated") {
		t.Errorf("stall reason %q does not say the topic was recreated", stalled)
	}
	if st := second.Stats(); st.DuplicatesSkipped != 0 || st.Appended != 0 {
		t.Errorf("appended %d and skipped %d records of the new topic as duplicates, want 0 and 0", st.Appended, st.DuplicatesSkipped)
	}
	// Let the stalled partition observe (and so commit, if it wrongly would)
	// a few more times: its status is refreshed at each observation.
	since := time.Now().Add(3 * cfg.CommitInterval)
	testenv.Eventually(t, 10*time.Second, func() bool {
		ps := second.Stats().Partitions
		return len(ps) == 1 && ps[0].Updated.After(since)
	}, "the stalled partition stopped observing")
	if after := testenv.Committed(t, e.brokers, e.group, e.topic, 1)[0]; after != before {
		t.Errorf("committed %d → %d on the recreated topic, want no commit", before, after)
	}
	t.Logf("topic recreated: partition stalled: %s", stalled)
}
