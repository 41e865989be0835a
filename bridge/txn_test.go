package bridge_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kbridge/kbridge/internal/testenv"
)

// produceTxn writes n records per partition in one committed transaction per
// round, with franz-go's transactional producer: each partition's log then
// ends with a commit marker, an offset that holds no record.
func produceTxn(t *testing.T, brokers []string, topic string, partitions, rounds, n int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.TransactionalID("tx-"+topic),
		kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	i := 0
	for range rounds {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		for p := range partitions {
			for range n {
				r := &kgo.Record{Partition: int32(p), Key: []byte("k" + strconv.Itoa(i)), Value: []byte("v" + strconv.Itoa(i))}
				i++
				if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTransactionMarkerAtTail (issue 7 point 4, commit side): a partition
// whose log ends with a transaction commit marker must neither be fetched in
// a hot loop nor keep its commit one below the log end: once every record is
// acknowledged, the commit reaches the log end (lag 0).
func TestTransactionMarkerAtTail(t *testing.T) {
	e := newEnv(t, 2)
	produceTxn(t, e.brokers, e.topic, e.partitions, 3, 10)
	// 30 records and 3 commit markers per partition; the last markers are
	// written after EndTransaction returns.
	want := map[int]int64{}
	for p := range e.partitions {
		want[p] = 33
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return sameOffsets(testenv.LogEnd(t, e.brokers, e.topic, e.partitions), want) },
		"log ends %v, want %v", testenv.LogEnd(t, e.brokers, e.topic, e.partitions), want)
	end := want
	cfg := e.config(t)
	in := startIngest(t, cfg)
	l := e.startWork(t, 0)
	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() == 30*e.partitions }, "processed %d of %d", l.total(), 30*e.partitions)
	testenv.Eventually(t, 30*time.Second, func() bool {
		return sameOffsets(testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions), end)
	}, "commits %v did not reach the log end %v (past the commit markers)",
		testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions), end)
	// At the tail, a fetch long-polls FetchMaxWait: about window/FetchMaxWait
	// requests per partition, as on a topic without transactions.
	const window = 2 * time.Second
	before := in.Stats().Fetches
	time.Sleep(window)
	fetches := in.Stats().Fetches - before
	plain := int64(e.partitions) * int64(window/cfg.FetchMaxWait)
	if fetches > 2*plain+int64(e.partitions) {
		t.Errorf("%d fetch requests in %v at the tail, want at most about 2 × %d (a fetch per FetchMaxWait %v per partition): a hot loop",
			fetches, window, plain, cfg.FetchMaxWait)
	}
	dups := 0
	for _, m := range l.seen {
		for _, n := range m {
			dups += n - 1
		}
	}
	t.Logf("transactional topic, %d partitions, log ends %v (markers at the tail): committed = log end, %d processed, duplicates %d; %d fetch requests in %v at the tail (about %d expected without transactions)",
		e.partitions, end, l.total(), dups, fetches, window, plain)
}

// TestCompactedTopic (issue 7 point 4, real Kafka): a compacted topic whose
// cleaner removed most records — offsets with gaps, from offset 0 on — is
// bridged without a hot loop and its commit reaches the log end.
func TestCompactedTopic(t *testing.T) {
	if !testenv.RealKafka() {
		t.Skip("kfake does not compact: needs a real Kafka broker (KAFKA_BROKERS)")
	}
	e := &env{brokers: testenv.Kafka(t), redis: testenv.NewRedis(t), partitions: 1}
	name := testenv.Name(t)
	e.topic, e.group, e.prefix = name, "g-"+name, "kbt-"+name
	e.rdb = e.redis.Client(t)
	cl := &kafka.Client{Addr: kafka.TCP(e.brokers...), Timeout: 10 * time.Second}
	ctx := context.Background()
	res, err := cl.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: e.topic, NumPartitions: 1, ReplicationFactor: 1,
		ConfigEntries: []kafka.ConfigEntry{
			{ConfigName: "cleanup.policy", ConfigValue: "compact"},
			{ConfigName: "segment.ms", ConfigValue: "100"},
			{ConfigName: "min.cleanable.dirty.ratio", ConfigValue: "0.001"},
			{ConfigName: "min.compaction.lag.ms", ConfigValue: "0"},
			{ConfigName: "delete.retention.ms", ConfigValue: "100"},
		}}}})
	if err != nil || res.Errors[e.topic] != nil {
		t.Fatalf("create compacted topic: %v %v", err, res.Errors[e.topic])
	}
	// 10 keys written 50 times each, in separate segments (segment.ms 100).
	w := &kafka.Writer{Addr: kafka.TCP(e.brokers...), Topic: e.topic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	for round := range 50 {
		msgs := make([]kafka.Message, 10)
		for k := range msgs {
			msgs[k] = kafka.Message{Key: []byte("k" + strconv.Itoa(k)), Value: []byte(strconv.Itoa(round))}
		}
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			t.Fatal(err)
		}
		if round%10 == 9 {
			time.Sleep(150 * time.Millisecond) // roll a segment
		}
	}
	// records lists the offsets that hold a record, read with a Reader.
	records := func() (offs []int64) {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: e.brokers, Topic: e.topic, Partition: 0, MaxWait: 100 * time.Millisecond})
		defer r.Close()
		end := testenv.LogEnd(t, e.brokers, e.topic, 1)[0]
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		for last := int64(-1); last < end-1; {
			m, err := r.ReadMessage(rctx)
			if err != nil {
				break
			}
			offs = append(offs, m.Offset)
			last = m.Offset
		}
		return offs
	}
	var survivors int
	testenv.Eventually(t, 90*time.Second, func() bool {
		// Keep rolling segments so the cleaner has closed ones to clean.
		_ = w.WriteMessages(ctx, kafka.Message{Key: []byte("k0"), Value: []byte("x")})
		time.Sleep(200 * time.Millisecond)
		survivors = len(records())
		return survivors < 200
	}, "the cleaner did not compact the topic: %v records survive", later(func() any { return survivors }))
	end := testenv.LogEnd(t, e.brokers, e.topic, 1)
	t.Logf("compacted: %d of %d offsets hold a record", survivors, end[0])

	cfg := e.config(t)
	in := startIngest(t, cfg)
	l := e.startWork(t, 0)
	// The cleaner goes on while the ingest reads (dirty ratio 0.001: the
	// last k0 writes are cleaned again), so records counted above may be
	// gone by then (CI: 12 counted, 11 fetched): it can only remove records,
	// never add any. So the commit must reach the log end, and every record
	// still in the log must have been processed.
	testenv.Eventually(t, 60*time.Second, func() bool {
		return sameOffsets(testenv.Committed(t, e.brokers, e.group, e.topic, 1), end)
	}, "commit %v did not reach the log end %v (%v records processed)",
		later(func() any { return testenv.Committed(t, e.brokers, e.group, e.topic, 1) }), end, later(func() any { return l.total() }))
	left := records()
	l.mu.Lock()
	for _, off := range left {
		if l.seen[0][off] == 0 {
			t.Errorf("offset %d holds a record that was not processed", off)
		}
	}
	l.mu.Unlock()
	if len(left) == 0 {
		t.Errorf("no record left in the log: the test tested nothing")
	}
	const window = 2 * time.Second
	before := in.Stats().Fetches
	time.Sleep(window)
	fetches := in.Stats().Fetches - before
	if plain := int64(window / cfg.FetchMaxWait); fetches > 2*plain+1 {
		t.Errorf("%d fetch requests in %v at the tail, want at most about 2 × %d: a hot loop", fetches, window, plain)
	}
	t.Logf("compacted topic: %d records over %d offsets processed (%d in the log at the end), committed = log end %d; %d fetch requests in %v at the tail",
		l.total(), end[0], len(left), end[0], fetches, window)
}

// later defers a figure of an Eventually message to the moment the message
// is printed: Eventually's arguments are evaluated when it is called.
type later func() any

func (f later) String() string { return fmt.Sprint(f()) }
