package bridge_test

// Break-it review R-ingest2 (issue 7 points 1, 5, 6, 8, 9 as merged in main).
// Each test asserts what the issue or docs/operations.md promises. The
// review's findings 1-3 failed on main and are regression tests now (branch
// topics3): TestRecreatedWhileRunningNeverCommitsNewTopic,
// TestDeletedTopicNotAutoCreatedByGroup, TestRecreatedSmallerRunbookCommitsNewLogEnd.

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
)

// topicExists asks the brokers (metadata without auto-creation, through
// kafka-go's Client, which sends AllowAutoTopicCreation false by default)
// whether topic exists. A Transport of its own: kafka-go's DefaultTransport
// caches metadata (6s), which would hide a delete or a creation.
func topicExists(t *testing.T, brokers []string, topic string) bool {
	t.Helper()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: tr}
	res, err := cl.Metadata(context.Background(), &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		t.Fatalf("metadata %s: %v", topic, err)
	}
	for _, tm := range res.Topics {
		if tm.Name == topic {
			return tm.Error == nil
		}
	}
	return false
}

// TestRecreatedWhileRunningNeverCommitsNewTopic (point 6): the topic is deleted and
// created again WHILE the ingest runs (as `kafka-topics --delete; --create`
// and a producer do within a second or two), and refilled past the old
// stream top. docs/operations.md "A recreated topic": the partition stalls
// (topic_recreated) within --metadata-interval, nothing is committed for the
// new topic meanwhile, and the runbook (DEL the stream) starts it afresh from
// "the group's committed offset for the new topic — Kafka deleted the old
// topic's commits with it, so that is --start-offset": all 300 new records
// are delivered. The default --metadata-interval (5s) is used: it is the
// window in which the ingest still believes the old topic ID.
func TestRecreatedWhileRunningNeverCommitsNewTopic(t *testing.T) {
	testenv.RequireReal(t, "topic deletion and topic IDs of a real broker")
	e := newEnv(t, 1)
	testenv.Produce(t, e.brokers, e.topic, 0, 100)
	cfg := e.config(t)
	cfg.MetadataInterval = 0 // the default, 5s
	r := startIngest(t, cfg)
	l := newLedger()
	wctx, stopOld := context.WithCancel(context.Background())
	wg := e.work(wctx, t, l, 0)
	e.waitDone(t, l, time.Minute) // old topic: 0..99 processed and committed
	stopOld()
	wg.Wait()

	l2 := e.startWork(t, 0) // the workers from now on: only the new topic's records reach them
	cl := &kafka.Client{Addr: kafka.TCP(e.brokers...), Timeout: 10 * time.Second}
	if _, err := cl.DeleteTopics(context.Background(), &kafka.DeleteTopicsRequest{Topics: []string{e.topic}}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	testenv.Eventually(t, 30*time.Second, func() bool {
		res, err := cl.CreateTopics(context.Background(), &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
			Topic: e.topic, NumPartitions: 1, ReplicationFactor: 1}}})
		return err == nil && res.Errors[e.topic] == nil
	}, "topic not recreated")
	testenv.Produce(t, e.brokers, e.topic, 1000, 300)
	t.Logf("topic deleted, recreated and refilled with 300 records in %v", time.Since(deleted).Round(time.Millisecond))

	var st bridge.PartitionStatus
	testenv.Eventually(t, time.Minute, func() bool {
		for _, p := range r.Stats().Partitions {
			st = p
		}
		return st.StallCause == bridge.StallTopicRecreated
	}, "the partition did not stall as recreated: %+v", r.Stats().Partitions)
	committedNew := e.committed(t, 0)
	t.Logf("stalled %v after the delete: %s; group's commit on the NEW topic: %d; appended %d, duplicates skipped %d",
		time.Since(deleted).Round(time.Millisecond), st.Stalled, committedNew, r.Stats().Appended, r.Stats().DuplicatesSkipped)
	if committedNew > 0 {
		t.Errorf("the ingest committed %d on the recreated topic before it stalled: the runbook's restart will start there, not at --start-offset", committedNew)
	}

	// The runbook: delete the stream; the ingest starts the partition afresh.
	if err := e.rdb.Del(context.Background(), e.stream(0)).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if len(l2ledgerOffsets(l2)) >= 300 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	got := l2ledgerOffsets(l2)
	var missing []int64
	for off := int64(0); off < 300; off++ {
		if !got[off] {
			missing = append(missing, off)
		}
	}
	t.Logf("after the runbook: %d of the new topic's 300 records delivered to the second pool; group's commit %d; stall %q",
		len(got), e.committed(t, 0), r.Stats().Partitions[0].StallCause)
	if len(missing) > 0 {
		t.Errorf("LOSS: %d records of the recreated topic never delivered (first %d, last %d)", len(missing), missing[0], missing[len(missing)-1])
	}
}

func l2ledgerOffsets(l *ledger) map[int64]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[int64]bool{}
	for off := range l.seen[0] {
		out[off] = true
	}
	return out
}

// TestDeletedTopicNotAutoCreatedByGroup (point 1): two ingests of one group
// bridge two topics; one is deleted mid-run (the operator means it). The
// docs: "topic deleted — the topic was bridged and is gone: its partitions
// are given up ... If it is created again it is a recreated topic". The
// ingest must never create it again itself. The brokers run with
// auto.create.topics.enable=true (Kafka's default, and scripts/kafka.sh's).
// kafka-go's group leader reads the partitions of every topic any member
// subscribes to with a Metadata request that allows auto-creation
// (conn.ReadPartitions, v6 AllowAutoTopicCreation: true): the member that
// has not dropped the deleted topic yet still subscribes to it when the
// other's rejoin rebalances the group.
func TestDeletedTopicNotAutoCreatedByGroup(t *testing.T) {
	t.Run("two members", func(t *testing.T) { deletedTopicStaysDeleted(t, false) })
	t.Run("third member joins after the delete", func(t *testing.T) { deletedTopicStaysDeleted(t, true) })
}

func deletedTopicStaysDeleted(t *testing.T, joinDuring bool) {
	testenv.RequireReal(t, "auto.create.topics.enable of a real broker")
	e := newEnv(t, 2)
	other := e.topic + "-b"
	testenv.CreateTopic(t, e.brokers, other, 2)
	eb := *e
	eb.topic = other
	cfg := e.config(t)
	cfg.Topics = []string{e.topic, other}
	cfg.MetadataInterval = 0 // the default, 5s: the members see the deletion seconds apart
	ins := []*running{startIngest(t, cfg), startIngest(t, cfg)}
	l := e.startWork(t, 0)
	lb := eb.startWork(t, 0)
	testenv.Produce(t, e.brokers, e.topic, 0, 200)
	testenv.Produce(t, e.brokers, other, 0, 200)
	e.waitDone(t, l, time.Minute)
	eb.waitDone(t, lb, time.Minute)
	gens0 := int64(0)
	for _, in := range ins {
		gens0 += in.Stats().Rebalances
	}

	cl := &kafka.Client{Addr: kafka.TCP(e.brokers...), Timeout: 10 * time.Second}
	if _, err := cl.DeleteTopics(context.Background(), &kafka.DeleteTopicsRequest{Topics: []string{other}}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return !topicExists(t, e.brokers, other) }, "topic not deleted")
	deleted := time.Now()
	if joinDuring {
		// A third ingest joins now (a rolling restart, a scale-up): the
		// group rebalances while the two others still subscribe to the
		// deleted topic (they drop it after two metadata reads).
		ins = append(ins, startIngest(t, cfg))
	}
	var recreated time.Duration
	produced := 200
	for time.Since(deleted) < 20*time.Second {
		testenv.Produce(t, e.brokers, e.topic, produced, 50)
		produced += 50
		if recreated == 0 && topicExists(t, e.brokers, other) {
			recreated = time.Since(deleted)
		}
		time.Sleep(250 * time.Millisecond)
	}
	e.waitDone(t, l, time.Minute)
	gens := -gens0
	for _, in := range ins {
		gens += in.Stats().Rebalances
	}
	var states []string
	for _, in := range ins {
		s := topicState(in.Ingest, other)
		states = append(states, s.State)
		for _, p := range in.Stats().Partitions {
			if p.Topic == other && p.StallCause != "" {
				t.Logf("partition %s/%d: %s", p.Topic, p.Partition, p.Stalled)
			}
		}
	}
	t.Logf("%s deleted for 20s: %d records of %s processed; %d generations after the delete; states %v; recreated after %v",
		other, produced, e.topic, gens, states, recreated)
	if recreated != 0 {
		t.Errorf("the deleted topic %s was created again %v after the delete, by the ingests' group (auto-creation): states now %v", other, recreated.Round(time.Millisecond), states)
	}
	if gens > 3*int64(len(ins)) {
		t.Errorf("%d generations for one deleted topic with %d members, want at most %d", gens, len(ins), 3*len(ins))
	}
}

// TestRecreatedSmallerRunbookCommitsNewLogEnd (point 6): the old topic was bridged to
// 1000; it is deleted and created again while the ingest runs, refilled with
// 300 (below the old top: the fetch at 1000 is out of range, no race). After
// the runbook (DEL the stream) the docs promise the partition "starts afresh
// from the group's committed offset for the new topic": the 300 records are
// delivered, and the commit follows them to the new log end — not held by
// what this generation committed for the OLD topic (the committer's done map
// keeps 1000 and drops every lower offer; the tracker is told committed 1000).
func TestRecreatedSmallerRunbookCommitsNewLogEnd(t *testing.T) {
	testenv.RequireReal(t, "topic deletion and topic IDs of a real broker")
	e := newEnv(t, 1)
	testenv.Produce(t, e.brokers, e.topic, 0, 1000)
	cfg := e.config(t)
	cfg.MetadataInterval = 500 * time.Millisecond
	r := startIngest(t, cfg)
	l := newLedger()
	wctx, stopOld := context.WithCancel(context.Background())
	wg := e.work(wctx, t, l, 0)
	e.waitDone(t, l, time.Minute)
	stopOld()
	wg.Wait()

	l2 := e.startWork(t, 0)
	recreateTopic(t, e.brokers, e.topic, 1)
	testenv.Produce(t, e.brokers, e.topic, 5000, 300)
	testenv.Eventually(t, time.Minute, func() bool {
		ps := r.Stats().Partitions
		return len(ps) == 1 && ps[0].StallCause == bridge.StallTopicRecreated
	}, "the partition did not stall as recreated: %+v", r.Stats().Partitions)
	if err := e.rdb.Del(context.Background(), e.stream(0)).Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, func() bool { return l2.total() >= 300 },
		"the new topic's records were not delivered after the runbook: %d of 300", l2.total())
	lost, _ := l2.check(map[int]int64{0: 300})
	deadline := time.Now().Add(20 * time.Second)
	var c int64
	for time.Now().Before(deadline) {
		if c = e.committed(t, 0); c == 300 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	ps := r.Stats().Partitions
	t.Logf("after the runbook: %d of 300 new records delivered (lost %d); Kafka commit %d (log end 300); status committed %d, log end %d, length %d, stall %q",
		l2.total(), lost, c, ps[0].Committed, ps[0].LogEnd, ps[0].Length, ps[0].StallCause)
	if lost != 0 {
		t.Errorf("LOSS: %d records of the recreated topic never delivered", lost)
	}
	if c != 300 {
		t.Errorf("the group's commit on the recreated topic is %d 20s after every record was acknowledged, want the log end 300", c)
	}
	if ps[0].Committed > ps[0].LogEnd {
		t.Errorf("status says committed %d above the log end %d", ps[0].Committed, ps[0].LogEnd)
	}
}

// TestReviewScriptFlushMidRun (point 9): SCRIPT FLUSH every 50ms on the
// ingest's Redis (a redis-server of the test's own) while 4,000 records
// flow: every NOSCRIPT is answered by one EVAL, the records all arrive, the
// commit reaches the log end, and nothing is lost.
func TestReviewScriptFlushMidRun(t *testing.T) {
	srv := testenv.StartRedisServer(t, "none")
	e := newEnv(t, 2)
	e.useRedis(t, srv.Addr())
	cfg := e.config(t)
	r := startIngest(t, cfg)
	l := e.startWork(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	flushed := make(chan int)
	go func() {
		n := 0
		defer func() { flushed <- n }()
		for ctx.Err() == nil {
			if e.rdb.ScriptFlush(context.Background()).Err() == nil {
				n++
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	for i := 0; i < 40; i++ {
		testenv.Produce(t, e.brokers, e.topic, i*100, 100)
		time.Sleep(100 * time.Millisecond)
	}
	lost, dups := e.waitDone(t, l, time.Minute)
	cancel()
	n := <-flushed
	st := r.Stats()
	t.Logf("SCRIPT FLUSH %d times while 4000 records flowed: lost=%d duplicates=%d, redis errors %d, appended %d", n, lost, dups, st.RedisErrors, st.Appended)
	if st.Appended != 4000 {
		t.Errorf("appended %d, want 4000", st.Appended)
	}
}
