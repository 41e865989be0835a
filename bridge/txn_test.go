package bridge_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kbridge/kbridge/internal/kfetch"
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

// txnWriter writes records to chosen partitions of a topic, in
// transactions or not, and remembers the offset and fate of each.
type txnWriter struct {
	t    *testing.T
	cl   *kgo.Client
	fate map[int]map[int64]string // partition -> offset -> "plain", "committed", "aborted", "open"
	open []*kgo.Record
}

func newTxnWriter(t *testing.T, brokers []string, topic, txnID string, fate map[int]map[int64]string) *txnWriter {
	t.Helper()
	opts := []kgo.Opt{kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.ManualPartitioner())}
	if txnID != "" {
		opts = append(opts, kgo.TransactionalID(txnID), kgo.TransactionTimeout(3*time.Minute))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &txnWriter{t: t, cl: cl, fate: fate}
}

func (w *txnWriter) produce(ctx context.Context, n int, parts ...int) []*kgo.Record {
	w.t.Helper()
	var rs []*kgo.Record
	for _, p := range parts {
		for i := range n {
			rs = append(rs, &kgo.Record{Partition: int32(p), Value: []byte("p" + strconv.Itoa(p) + "-" + strconv.Itoa(i))})
		}
	}
	if err := w.cl.ProduceSync(ctx, rs...).FirstErr(); err != nil {
		w.t.Fatalf("produce: %v", err)
	}
	return rs
}

func (w *txnWriter) mark(rs []*kgo.Record, fate string) {
	for _, r := range rs {
		p := int(r.Partition)
		if w.fate[p] == nil {
			w.fate[p] = map[int64]string{}
		}
		w.fate[p][r.Offset] = fate
	}
}

func (w *txnWriter) plain(ctx context.Context, n int, parts ...int) {
	w.mark(w.produce(ctx, n, parts...), "plain")
}

func (w *txnWriter) begin(ctx context.Context, n int, parts ...int) {
	w.t.Helper()
	if err := w.cl.BeginTransaction(); err != nil {
		w.t.Fatal(err)
	}
	w.open = w.produce(ctx, n, parts...)
	w.mark(w.open, "open")
}

func (w *txnWriter) end(ctx context.Context, commit bool) {
	w.t.Helper()
	if err := w.cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
		w.t.Fatalf("end transaction: %v", err)
	}
	fate := "aborted"
	if commit {
		fate = "committed"
	}
	w.mark(w.open, fate)
	w.open = nil
}

func (w *txnWriter) txn(ctx context.Context, commit bool, n int, parts ...int) {
	w.t.Helper()
	w.begin(ctx, n, parts...)
	w.end(ctx, commit)
}

// TestIsolationLevel (invariant 10, issue 7 point 3): committed, aborted and
// open transactions of two real transactional producers, interleaved with
// plain records across three partitions. With the default read_committed
// the workers get every committed and plain record and not one aborted or
// open one; the partition with an open transaction commits no further than
// its first record; nothing spins at the tails (markers, the open
// transaction): each partition is fetched at most twice as often as an idle
// partition of a plain topic; and once the open transaction commits, every
// partition's commit reaches its log end (lag 0), markers included. A
// second ingest with read_uncommitted delivers the aborted records too.
func TestIsolationLevel(t *testing.T) {
	e := newEnv(t, 3)
	plainTopic := testenv.Name(t) + "-plain"
	testenv.CreateTopic(t, e.brokers, plainTopic, 1)
	testenv.Produce(t, e.brokers, plainTopic, 0, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	fate := map[int]map[int64]string{}
	plain := newTxnWriter(t, e.brokers, e.topic, "", fate)
	a := newTxnWriter(t, e.brokers, e.topic, e.topic+"-a", fate)
	b := newTxnWriter(t, e.brokers, e.topic, e.topic+"-b", fate)
	plain.plain(ctx, 5, 0, 1, 2)
	a.txn(ctx, true, 5, 0, 1, 2)
	b.begin(ctx, 5, 1) // stays open: partition 1's last stable offset stops here
	a.txn(ctx, false, 5, 0, 1, 2)
	plain.plain(ctx, 5, 0, 1, 2)
	a.txn(ctx, true, 5, 0, 1, 2)
	a.txn(ctx, false, 5, 0, 2) // partitions 0 and 2 end with an abort marker
	firstOpen := int64(-1)
	for off, f := range fate[1] {
		if f == "open" && (firstOpen < 0 || off < firstOpen) {
			firstOpen = off
		}
	}
	count := func(p int, fates ...string) int {
		n := 0
		for _, f := range fate[p] {
			if slices.Contains(fates, f) {
				n++
			}
		}
		return n
	}
	deliverable := func() int {
		return count(0, "plain", "committed") + count(1, "plain", "committed") + count(2, "plain", "committed")
	}

	cfg := e.config(t)
	cfg.Topics = []string{e.topic, plainTopic}
	in := startIngest(t, cfg)
	l := e.startWork(t, 0)
	// below the open transaction on partition 1: in read_committed the
	// broker returns nothing from there on until it ends
	want := deliverable()
	for off, f := range fate[1] {
		if off > firstOpen && (f == "plain" || f == "committed") {
			want--
		}
	}
	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() >= want }, "processed fewer than %d committed and plain records", want)
	end := testenv.LogEnd(t, e.brokers, e.topic, e.partitions)
	testenv.Eventually(t, 30*time.Second, func() bool {
		c := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
		return c[0] == end[0] && c[2] == end[2] && c[1] == firstOpen
	}, "with a transaction open at %d on partition 1: commits %v, want %d, %d, %d (log ends %v)",
		firstOpen, testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions), end[0], firstOpen, end[2], end)

	// the tails: markers (0, 2), an open transaction (1), a plain topic
	rates := tailFetchRates(t, in, 2*time.Second)
	plainRate := rates[tp{plainTopic, 0}]
	t.Logf("%s: partition fetches/s at the tail (fetch max wait %v): abort marker %.1f and %.1f, open transaction %.1f, plain topic %.1f",
		testenv.String(), cfg.FetchMaxWait, rates[tp{e.topic, 0}], rates[tp{e.topic, 2}], rates[tp{e.topic, 1}], plainRate)
	for p := range e.partitions {
		if r := rates[tp{e.topic, p}]; r > 2*plainRate+1 {
			t.Errorf("partition %d fetched %.1f times/s at its tail, a plain topic's %.1f: spinning", p, r, plainRate)
		}
	}
	if c := e.committed(t, 1); c != firstOpen {
		t.Fatalf("partition 1 committed %d past its open transaction at %d", c, firstOpen)
	}

	// the open transaction commits: everything is delivered, and every
	// commit reaches its log end, markers included
	b.end(ctx, true)
	want = deliverable()
	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() >= want }, "processed fewer than %d after the commit", want)
	end = testenv.LogEnd(t, e.brokers, e.topic, e.partitions)
	testenv.Eventually(t, 30*time.Second, func() bool {
		return sameOffsets(testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions), end)
	}, "commits %v did not reach the log ends %v", testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions), end)

	delivered, aborted, lost := 0, 0, 0
	l.mu.Lock()
	for p := range e.partitions {
		for off, f := range fate[p] {
			n := l.seen[p][off]
			switch {
			case f == "aborted" && n > 0:
				aborted++
			case f != "aborted" && n == 0:
				lost++
			}
			delivered += n
		}
		for off := range l.seen[p] {
			if _, ok := fate[p][off]; !ok {
				t.Errorf("partition %d: offset %d delivered, but no record was written there (a marker?)", p, off)
			}
		}
	}
	l.mu.Unlock()
	s := in.Stats()
	t.Logf("read_committed: %d records delivered, %d aborted delivered, %d committed lost; ingest skipped %d aborted records and %d markers; commits = log ends %v",
		delivered, aborted, lost, s.AbortedSkipped, s.MarkersSkipped, end)
	if aborted != 0 || lost != 0 {
		t.Fatalf("%d aborted records delivered, %d committed ones lost", aborted, lost)
	}
	if s.AbortedSkipped != int64(count(0, "aborted")+count(1, "aborted")+count(2, "aborted")) {
		t.Errorf("the ingest skipped %d aborted records, %d were written", s.AbortedSkipped, count(0, "aborted")+count(1, "aborted")+count(2, "aborted"))
	}

	// read_uncommitted: the aborted records too
	cfg2 := e.config(t)
	cfg2.Group, cfg2.Prefix, cfg2.Isolation = e.group+"-ru", e.prefix+"-ru", kfetch.ReadUncommitted
	startIngest(t, cfg2)
	e2 := *e
	e2.group, e2.prefix = cfg2.Group, cfg2.Prefix
	l2 := e2.startWork(t, 0)
	all := len(fate[0]) + len(fate[1]) + len(fate[2])
	testenv.Eventually(t, 60*time.Second, func() bool { return l2.total() >= all }, "read_uncommitted: processed fewer than %d", all)
	t.Logf("read_uncommitted: %d of %d data records delivered (aborted included)", l2.total(), all)
}

// tailFetchRates returns each assigned partition's fetches per second over
// window.
func tailFetchRates(t *testing.T, in *running, window time.Duration) map[tp]float64 {
	t.Helper()
	before := map[tp]int64{}
	for _, p := range in.Stats().Partitions {
		before[tp{p.Topic, p.Partition}] = p.Fetches
	}
	t0 := time.Now()
	testenv.Eventually(t, window+10*time.Second, func() bool { return time.Since(t0) >= window }, "")
	el := time.Since(t0).Seconds()
	out := map[tp]float64{}
	for _, p := range in.Stats().Partitions {
		out[tp{p.Topic, p.Partition}] = float64(p.Fetches-before[tp{p.Topic, p.Partition}]) / el
	}
	return out
}

type tp struct {
	topic     string
	partition int
}

// later defers a figure of an Eventually message to the moment the message
// is printed: Eventually's arguments are evaluated when it is called.
type later func() any

func (f later) String() string { return fmt.Sprint(f()) }
