package bridge_test

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// recreateTopic deletes topic and creates it again with the same partitions.
func recreateTopic(t *testing.T, brokers []string, topic string, partitions int) {
	t.Helper()
	cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	if _, err := cl.DeleteTopics(context.Background(), &kafka.DeleteTopicsRequest{Topics: []string{topic}}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() bool {
		res, err := cl.CreateTopics(context.Background(), &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
			Topic: topic, NumPartitions: partitions, ReplicationFactor: 1}}})
		return err == nil && res.Errors[topic] == nil
	}, "topic not recreated")
	testenv.Eventually(t, 30*time.Second, func() bool {
		return testenv.LogEnd(t, brokers, topic, partitions)[0] == 0
	}, "recreated topic not ready")
}

// TestRecreatedTopicRefilled (issue 7 point 6): a topic is deleted and
// created again, then refilled past the old stream's top (300 records; the
// stream holds the old 0..99). The ingest must not read the new topic as the
// old one: the partition stalls, saying why in its status (and so in
// kbridge status and the metrics), appends nothing and commits nothing. The
// runbook — delete the stream — starts it afresh: all 300 new records are
// delivered. On main the new records 0..99 were skipped as duplicates of the
// old ones and the commit passed them.
func TestRecreatedTopicRefilled(t *testing.T) {
	e := newEnv(t, 1)
	testenv.Produce(t, e.brokers, e.topic, 0, 100)
	cfg := e.config(t)
	cfg.MetadataInterval = 200 * time.Millisecond
	first := startIngest(t, cfg)
	l := newLedger()
	ctx, cancel := context.WithCancel(context.Background())
	wg := e.work(ctx, t, l, 0)
	e.waitDone(t, l, time.Minute)
	first.stop(t)
	cancel()
	wg.Wait()

	recreateTopic(t, e.brokers, e.topic, 1)
	testenv.Produce(t, e.brokers, e.topic, 1000, 300)
	before := testenv.Committed(t, e.brokers, e.group, e.topic, 1)[0]

	second := startIngest(t, cfg)
	var st bridge.PartitionStatus
	testenv.Eventually(t, 60*time.Second, func() bool {
		for _, p := range second.Stats().Partitions {
			st = p
		}
		return st.StallCause != ""
	}, "the partition did not stall: %+v", second.Stats().Partitions)
	if st.StallCause != bridge.StallTopicRecreated {
		t.Errorf("stall cause %q (%s), want %q", st.StallCause, st.Stalled, bridge.StallTopicRecreated)
	}
	// The status hash says so too (kbridge status, redis-cli).
	testenv.Eventually(t, 10*time.Second, func() bool {
		h, _ := e.rdb.HGetAll(context.Background(), wire.StatusKey(e.stream(0))).Result()
		return bridge.ParseStatus(h).StallCause == bridge.StallTopicRecreated
	}, "the status hash does not carry the stall")
	since := time.Now().Add(3 * cfg.CommitInterval)
	testenv.Eventually(t, 10*time.Second, func() bool {
		ps := second.Stats().Partitions
		return len(ps) == 1 && ps[0].Updated.After(since)
	}, "the stalled partition stopped observing")
	if s := second.Stats(); s.Appended != 0 || s.DuplicatesSkipped != 0 {
		t.Errorf("appended %d and skipped %d records of the new topic as duplicates, want 0 and 0", s.Appended, s.DuplicatesSkipped)
	}
	if after := testenv.Committed(t, e.brokers, e.group, e.topic, 1)[0]; after != before {
		t.Errorf("committed %d → %d on the recreated topic while stalled, want no commit", before, after)
	}
	t.Logf("recreated topic refilled to 300 (old stream top 99): stalled: %s", st.Stalled)

	// The runbook: the old records are done; delete the stream.
	if err := e.rdb.Del(context.Background(), e.stream(0)).Err(); err != nil {
		t.Fatal(err)
	}
	l2 := e.startWork(t, 0)
	lost, dups := e.waitDone(t, l2, time.Minute)
	if ps := second.Stats().Partitions; len(ps) != 1 || ps[0].StallCause != "" {
		t.Errorf("still stalled after the runbook: %+v", ps)
	}
	t.Logf("stream deleted (runbook): the partition started afresh, new topic's 300 records: lost=%d duplicates=%d", lost, dups)
}
