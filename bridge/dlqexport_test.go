package bridge_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/dlqkafka"
	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
	"github.com/kbridge/kbridge/worker"
)

// poisonEvery makes the record produced as number i ("v<i>") a poison
// record when i%poisonEvery == 3: the test worker dead-letters it at once.
const poisonEvery = 50

func isPoison(value []byte) bool {
	if strings.HasPrefix(string(value), "poison") {
		return true
	}
	i, err := strconv.Atoi(strings.TrimPrefix(string(value), "v"))
	return err == nil && i%poisonEvery == 3
}

func poisonCount(from, n int) int {
	c := 0
	for i := from; i < from+n; i++ {
		if i%poisonEvery == 3 {
			c++
		}
	}
	return c
}

func (e *env) dlqTopic() string { return wire.DLQTopic(wire.DefaultDLQTopic, e.topic) }

// startIngestWith is startIngest with hook applied to the Ingest before Run.
func startIngestWith(t *testing.T, cfg bridge.Config, hook func(*bridge.Ingest)) *running {
	t.Helper()
	in, err := bridge.New(cfg)
	if err != nil {
		t.Fatalf("bridge.New: %v", err)
	}
	hook(in)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Ingest: in, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- in.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// startPoisonWorker runs a kbridge worker (the worker library) on e's
// streams: it records each record it handles in handled, and each poison
// record it sees in poison, which it rejects as permanent (dead-lettered at
// once, by the worker's atomic dead-letter script). Stopped when the test
// ends.
func (e *env) startPoisonWorker(t *testing.T, handled, poison *ledger) {
	t.Helper()
	w, err := worker.New(worker.Config{
		Redis: e.rdb, Prefix: e.prefix, Concurrency: 8,
		VisibilityTimeout: 3 * time.Second, BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		BlockTimeout: 100 * time.Millisecond, DiscoveryInterval: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelError})),
		Handler: func(ctx context.Context, m *worker.Message) error {
			if isPoison(m.Value) {
				poison.add(m.Partition, m.Offset)
				return worker.Permanent(errors.New("poison record"))
			}
			handled.add(m.Partition, m.Offset)
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// kafkaDLQ reads e's dead-letter topic. It fails the test on a read error
// other than the topic not existing yet (then it returns nothing).
func (e *env) kafkaDLQ(t *testing.T) []dlqkafka.DeadLetter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A transport of its own: kafka-go's default one answers metadata
	// requests from a cache refreshed every few seconds, which would not
	// know a dead-letter topic created a moment ago.
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	c := &kafka.Client{Addr: kafka.TCP(e.brokers...), Timeout: 10 * time.Second, Transport: tr}
	var out []dlqkafka.DeadLetter
	var err error
	// A topic created a moment ago may answer "not leader" for a while.
	for {
		out = out[:0]
		err = dlqkafka.List(ctx, c, e.dlqTopic(), nil, func(d dlqkafka.DeadLetter) bool {
			out = append(out, d)
			return true
		})
		if !errors.Is(err, kafka.NotLeaderForPartition) || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		if errors.Is(err, kafka.UnknownTopicOrPartition) || errors.Is(err, kafka.LeaderNotAvailable) {
			return nil
		}
		t.Fatalf("read %s: %v", e.dlqTopic(), err)
	}
	return out
}

// exportedOffsets returns, per partition, how many times each record offset
// is in the dead-letter topic.
func exportedOffsets(dls []dlqkafka.DeadLetter) map[int]map[int64]int {
	out := map[int]map[int64]int{}
	for _, d := range dls {
		if d.Err != nil || d.Malformed != "" {
			continue
		}
		if out[d.Partition] == nil {
			out[d.Partition] = map[int64]int{}
		}
		out[d.Partition][d.Offset]++
	}
	return out
}

// snapshot returns a copy of the ledger's offsets.
func (l *ledger) snapshot() map[int]map[int64]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[int]map[int64]int{}
	for p, m := range l.seen {
		out[p] = map[int64]int{}
		for o, n := range m {
			out[p][o] = n
		}
	}
	return out
}

// dlqWatch samples, until finish, the committed offsets and then the
// dead-letter topic: every poison record below a partition's committed
// offset must be in Kafka by then (the commit never passes a dead letter
// Kafka does not have).
type dlqWatch struct {
	stop, done        chan struct{}
	checks, violation atomic.Int64
	first             atomic.Value // string
}

func (e *env) watchDLQCommits(t *testing.T, poison *ledger) *dlqWatch {
	w := &dlqWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			committed := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
			seen := poison.snapshot()
			exported := exportedOffsets(e.kafkaDLQ(t))
			for p, offs := range seen {
				for o := range offs {
					if o < committed[p] && exported[p][o] == 0 {
						if w.violation.Add(1) == 1 {
							w.first.Store(fmt.Sprintf("partition %d committed %d, past poison offset %d, which is not in %s", p, committed[p], o, e.dlqTopic()))
						}
					}
				}
			}
			w.checks.Add(1)
		}
	}()
	return w
}

func (w *dlqWatch) finish(t *testing.T) {
	t.Helper()
	close(w.stop)
	<-w.done
	if n := w.violation.Load(); n > 0 {
		t.Errorf("%d commits passed a dead letter not in Kafka; first: %v", n, w.first.Load())
	}
	if w.checks.Load() < 5 {
		t.Errorf("only %d commit checks ran", w.checks.Load())
	}
}

// dlqLen sums XLEN of e's dead-letter streams.
func (e *env) dlqLen(t *testing.T) int64 {
	var n int64
	for p := 0; p < e.partitions; p++ {
		c, err := e.rdb.XLen(context.Background(), wire.DLQKey(e.stream(p))).Result()
		if err == nil {
			n += c
		}
	}
	return n
}

// allCommitted reports whether every partition's commit reached its log end.
func (e *env) allCommitted(t *testing.T) bool {
	end := testenv.LogEnd(t, e.brokers, e.topic, e.partitions)
	c := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
	for p, off := range end {
		if c[p] != off {
			return false
		}
	}
	return true
}

// lostRecords counts offsets below the log end that the worker neither
// handled nor dead-lettered into Kafka.
func (e *env) lostRecords(t *testing.T, handled *ledger) (lost int, dlqDups int) {
	end := testenv.LogEnd(t, e.brokers, e.topic, e.partitions)
	h := handled.snapshot()
	x := exportedOffsets(e.kafkaDLQ(t))
	for p, endp := range end {
		for o := int64(0); o < endp; o++ {
			if h[p][o] == 0 && x[p][o] == 0 {
				lost++
			}
		}
		for _, n := range x[p] {
			dlqDups += n - 1
		}
	}
	return lost, dlqDups
}

// TestDeadLettersExported: poison records are dead-lettered by a kbridge
// worker; the ingest copies each dead letter to "<topic>.dlq" with the
// record's key, value and headers and the dead-letter fields as headers, and
// the commit reaches the log end only once they are in Kafka. The dead
// letters stay in Redis (until "kbridge dlq delete").
func TestDeadLettersExported(t *testing.T) {
	const n = 400
	e := newEnv(t, 2)
	testenv.Produce(t, e.brokers, e.topic, 0, n)
	// Records whose key is null, with headers (repeated, null, empty).
	special := []kafka.Message{
		{Value: []byte("poison-null-key"), Headers: []kafka.Header{{Key: "h", Value: []byte("1")}, {Key: "h", Value: nil}, {Key: "e", Value: []byte{}}}},
		{Key: []byte{}, Value: []byte("poison-empty-key")},
	}
	w := &kafka.Writer{Addr: kafka.TCP(e.brokers...), Topic: e.topic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	if err := w.WriteMessages(context.Background(), special...); err != nil {
		t.Fatal(err)
	}
	w.Close()
	in := startIngest(t, e.config(t))
	handled, poison := newLedger(), newLedger()
	e.startPoisonWorker(t, handled, poison)
	want := poisonCount(0, n)
	testenv.Eventually(t, 60*time.Second, func() bool { return e.allCommitted(t) },
		"commits never reached the log end (dead letters in Redis %d of %d; stats %+v)", e.dlqLen(t), want, in.DLQStats())

	dls := e.kafkaDLQ(t)
	byValue := map[string]dlqkafka.DeadLetter{}
	for _, d := range dls {
		if d.Err != nil {
			t.Fatalf("%s: %v", d.Ref, d.Err)
		}
		byValue[string(d.Value)] = d
	}
	for _, m := range special {
		d, ok := byValue[string(m.Value)]
		var hs []wire.Header
		for _, h := range m.Headers {
			hs = append(hs, wire.Header{Key: h.Key, Value: h.Value})
		}
		if !ok || (d.Key == nil) != (m.Key == nil) || len(d.Key) != len(m.Key) || fmt.Sprintf("%q", d.Headers) != fmt.Sprintf("%q", hs) ||
			(len(hs) > 0 && d.Headers[1].Value != nil) {
			t.Errorf("dead letter of %q in Kafka: key %q (nil %v), headers %q; want key %q (nil %v), headers %q",
				m.Value, d.Key, d.Key == nil, d.Headers, m.Key, m.Key == nil, hs)
		}
		delete(byValue, string(m.Value))
	}
	seen := poison.snapshot()
	for p, offs := range seen {
		for o := range offs {
			found := false
			for _, d := range dls {
				if d.Partition == p && d.Offset == o {
					found = true
					key := "k" + strings.TrimPrefix(string(d.Value), "v")
					if strings.HasPrefix(string(d.Value), "poison") {
						key = string(d.Key) // checked above
					}
					if d.Topic != e.topic || string(d.Key) != key || !isPoison(d.Value) || d.Malformed != "" ||
						d.Info.Reason != wire.ReasonRejected || d.Info.Group != "workers" || d.Info.Error == "" ||
						d.Info.Deliveries != 1 || d.Info.Stream != e.stream(p) || d.Info.Time.IsZero() {
						t.Errorf("dead letter of %d/%d in Kafka: %+v", p, o, d)
					}
					if d.Ref.Partition != p%2 {
						t.Errorf("dead letter of partition %d is in partition %d of %s, want the same number", p, d.Ref.Partition, e.dlqTopic())
					}
					// Still in Redis, under the ref the header names.
					_, _, id, _ := worker.ParseRef(d.KafkaDeadLetter.Ref)
					if xs, err := e.rdb.XRange(context.Background(), wire.DLQKey(e.stream(p)), id, id).Result(); err != nil || len(xs) != 1 {
						t.Errorf("dead letter %s not in Redis any more: %v %v", d.KafkaDeadLetter.Ref, xs, err)
					}
				}
			}
			if !found {
				t.Errorf("poison record %d/%d is not in %s", p, o, e.dlqTopic())
			}
		}
	}
	if len(byValue) != want || poison.total() != want+len(special) {
		t.Errorf("%d distinct poison records in Kafka, %d seen by the worker; want %d", len(byValue), poison.total(), want)
	}
	for p := 0; p < e.partitions; p++ {
		pend, err := e.rdb.XPending(context.Background(), wire.DLQKey(e.stream(p)), wire.DLQExportGroup).Result()
		if err != nil || pend.Count != 0 {
			t.Errorf("export group on partition %d: %+v, %v; want nothing pending", p, pend, err)
		}
	}
	lost, dups := e.lostRecords(t, handled)
	if lost != 0 {
		t.Errorf("%d records neither handled nor in the dead-letter topic", lost)
	}
	st := in.DLQStats()
	t.Logf("%d records, %d poison: %d dead letters in %s (%d duplicates), %d in Redis; lost=%d; export stats %+v",
		n, want, len(dls), e.dlqTopic(), dups, e.dlqLen(t), lost, st)
}

// TestCommitHeldWhileKafkaRefusesDeadLetters: while Kafka refuses the
// dead-letter topic (a seam: every produce fails as a topic authorization
// failure would), the partition's commit stops exactly at the dead-lettered
// record, although every record after it is acknowledged; the other
// partitions commit on. Once Kafka accepts, the dead letter is exported and
// the commit reaches the log end.
func TestCommitHeldWhileKafkaRefusesDeadLetters(t *testing.T) {
	const n = 200
	e := newEnv(t, 2)
	testenv.Produce(t, e.brokers, e.topic, 0, n)
	var refuse atomic.Bool
	refuse.Store(true)
	var refusals atomic.Int64
	in := startIngestWith(t, e.config(t), func(in *bridge.Ingest) {
		bridge.SetDLQRefusal(in, func() error {
			if refuse.Load() {
				refusals.Add(1)
				return kafka.TopicAuthorizationFailed
			}
			return nil
		})
	})
	handled, poison := newLedger(), newLedger()
	e.startPoisonWorker(t, handled, poison)
	want := poisonCount(0, n)
	testenv.Eventually(t, 60*time.Second, func() bool {
		return poison.total() == want && handled.total() == n-want && e.dlqLen(t) == int64(want) && refusals.Load() >= 3
	}, "poison %d/%d, handled %d/%d, dead letters %d, refusals %d", poison.total(), want, handled.total(), n-want, e.dlqLen(t), refusals.Load())

	// The commit of each partition with a poison record stops at its lowest
	// poison offset; the others reach the log end. Wait for that, then for
	// more refused attempts, and check it stayed there.
	end := testenv.LogEnd(t, e.brokers, e.topic, e.partitions)
	seen := poison.snapshot()
	expect := map[int]int64{}
	for p := 0; p < e.partitions; p++ {
		expect[p] = end[p]
		for o := range seen[p] {
			expect[p] = min(expect[p], o)
		}
	}
	atExpect := func() bool {
		c := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
		for p, w := range expect {
			if c[p] != w {
				return false
			}
		}
		return true
	}
	testenv.Eventually(t, 30*time.Second, atExpect, "commits %v, want %v", testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions), expect)
	before := refusals.Load()
	testenv.Eventually(t, 30*time.Second, func() bool { return refusals.Load() >= before+3 }, "no more export attempts")
	if !atExpect() {
		t.Fatalf("commits %v while Kafka refuses the dead letters, want %v", testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions), expect)
	}
	st := in.DLQStats()
	if st.HeldPartitions == 0 || st.Unexported != int64(want) || st.Exported != 0 {
		t.Errorf("stats while refused: %+v, want held partitions, %d unexported, 0 exported", st, want)
	}
	status, _ := e.rdb.HGetAll(context.Background(), wire.StatusKey(e.stream(0))).Result()
	t.Logf("while refused (%d refusals): commits %v = lowest poison offsets, stats %+v; status of partition 0: %s=%s %s=%s %s=%q",
		refusals.Load(), expect, st, bridge.StatusDLQUnexported, status[bridge.StatusDLQUnexported],
		bridge.StatusDLQHeldAt, status[bridge.StatusDLQHeldAt], bridge.StatusDLQExportError, status[bridge.StatusDLQExportError])
	if status[bridge.StatusDLQExportError] == "" || status[bridge.StatusDLQHeldAt] == "-1" {
		t.Errorf("status hash does not say the commit is held: %v", status)
	}

	refuse.Store(false)
	testenv.Eventually(t, 60*time.Second, func() bool { return e.allCommitted(t) }, "commits did not resume: %+v", in.DLQStats())
	lost, dups := e.lostRecords(t, handled)
	if lost != 0 {
		t.Errorf("%d records lost", lost)
	}
	st = in.DLQStats()
	if st.Exported < int64(want) || st.HeldPartitions != 0 {
		t.Errorf("stats after: %+v", st)
	}
	t.Logf("after Kafka accepted: commits at the log end %v, %d exported (%d duplicates), lost=%d", end, st.Exported, dups, lost)
}

// TestCommitHeldWithManyDeadLetters: more dead letters wait for Kafka than
// a commit looks at (bridge.DLQScanLimit of those the export read and of
// those it did not), and the lowest record offsets are among those it does
// not look at: the partition commits nothing at all, rather than the lowest
// offset it saw, until Kafka takes them; then the commit reaches the log
// end.
func TestCommitHeldWithManyDeadLetters(t *testing.T) {
	lim := bridge.DLQScanLimit
	dead, n := 4*lim, 5*lim
	e := newEnv(t, 1)
	ctx := context.Background()
	// The export reads 200 (twice the limit) and holds them pending while
	// Kafka refuses; the commit looks at the first 100 of those and at the
	// first 100 after them. The lowest offsets are the second 100.
	for i := 0; i < dead; i++ {
		o := lim + i
		if i >= lim && i < 2*lim {
			o = i - lim
		}
		if err := e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: wire.DLQKey(e.stream(0)), Values: []any{"offset", strconv.Itoa(o)}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Produce(t, e.brokers, e.topic, 0, n)
	var refuse atomic.Bool
	refuse.Store(true)
	var refusals atomic.Int64
	in := startIngestWith(t, e.config(t), func(in *bridge.Ingest) {
		bridge.SetDLQRefusal(in, func() error {
			if refuse.Load() {
				refusals.Add(1)
				return kafka.TopicAuthorizationFailed
			}
			return nil
		})
	})
	l := e.startWork(t, 0)
	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() == n && refusals.Load() >= 3 },
		"handled %d of %d, refusals %d", l.total(), n, refusals.Load())
	// Every record is acknowledged; observations offer the log end, which
	// must not be committed, nor anything above 0.
	before := refusals.Load()
	testenv.Eventually(t, 30*time.Second, func() bool { return refusals.Load() >= before+3 }, "no more export attempts")
	if c := e.committed(t, 0); c > 0 {
		t.Fatalf("committed %d with %d dead letters not in Kafka, the lowest at offset 0", c, dead)
	}
	st := in.DLQStats()
	if st.HeldPartitions != 1 {
		t.Errorf("stats %+v, want the partition held", st)
	}
	refuse.Store(false)
	testenv.Eventually(t, 60*time.Second, func() bool { return e.allCommitted(t) }, "commit did not reach the log end: %+v", in.DLQStats())
	if got := len(e.kafkaDLQ(t)); got != dead {
		t.Errorf("%d dead letters in Kafka, want %d", got, dead)
	}
	t.Logf("%d dead letters not exported (the commit looks at %d + %d): nothing committed through %d refusals; then all exported and committed to %d",
		dead, lim, lim, refusals.Load(), n)
}

// TestJunkInDeadLetterStreamDoesNotStallCommit: another program writes junk
// into a dead-letter stream — entries without an offset, with a low offset
// and nothing else, with binary fields, one larger than Kafka takes — and
// reads one in the export group under a consumer name of its own; another
// partition's dead-letter key is a string. None stalls the commit: junk is
// exported as it is (with the reason it is not a record), the oversized one
// is exported as a stub (its coordinates and why, no value), recorded in
// <stream>:dlq:stubs and counted as skipped; the one another consumer held
// is taken over and exported.
func TestJunkInDeadLetterStreamDoesNotStallCommit(t *testing.T) {
	const n = 100
	e := newEnv(t, 2)
	ctx := context.Background()
	if err := e.rdb.Set(ctx, wire.DLQKey(e.stream(1)), "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	dlq := wire.DLQKey(e.stream(0))
	add := func(fields ...any) string {
		id, err := e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: dlq, Values: fields}).Result()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	// Before the ingest ever ran: the junk is there when the export group
	// is created (at 0).
	add("foo", "bar")
	add("offset", "0")
	add("offset", "not a number", "value", "\x00\xff binary")
	big := add("topic", e.topic, "partition", "0", "offset", "5", "value", strings.Repeat("x", 8<<10)) // too large
	if err := e.rdb.XGroupCreate(ctx, dlq, wire.DLQExportGroup, "0").Err(); err != nil {
		t.Fatal(err)
	}
	rogue := add("rogue", "held by another consumer", "offset", "1")
	if err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: wire.DLQExportGroup, Consumer: "someone-else",
		Streams: []string{dlq, ">"}, Count: 100}).Err(); err != nil {
		t.Fatal(err)
	}
	testenv.Produce(t, e.brokers, e.topic, 0, n)
	cfg := e.config(t)
	cfg.DLQMaxBytes = 4 << 10
	in := startIngest(t, cfg)
	l := e.startWork(t, 0)
	testenv.Eventually(t, 60*time.Second, func() bool { return l.total() == n && e.allCommitted(t) },
		"handled %d of %d, commit %v of %v; stats %+v", l.total(), n,
		testenv.Committed(t, e.brokers, e.group, e.topic, 2), testenv.LogEnd(t, e.brokers, e.topic, 2), in.DLQStats())
	testenv.Eventually(t, 30*time.Second, func() bool { return len(e.kafkaDLQ(t)) == 5 }, "junk in Kafka: %d, want 5", len(e.kafkaDLQ(t)))
	var got []string
	stubs := 0
	for _, d := range e.kafkaDLQ(t) {
		if d.Stub != "" {
			stubs++
			if d.KafkaDeadLetter.Ref != wire.DeadLetterRef(e.topic, 0, big) || d.Value != nil || len(d.Fields) != 0 || !strings.Contains(d.Stub, "--dlq-max-bytes 4096") {
				t.Errorf("stub of %s: %+v", big, d.KafkaDeadLetter)
			}
			t.Logf("stub in Kafka: ref %s, offset %d, malformed %q: %s", d.KafkaDeadLetter.Ref, d.Offset, d.Malformed, d.Stub)
			continue
		}
		if d.Err != nil || d.Malformed == "" {
			t.Errorf("junk exported as %+v (err %v), want malformed", d.KafkaDeadLetter, d.Err)
		}
		keys := make([]string, 0, len(d.Fields))
		for k, v := range d.Fields {
			keys = append(keys, k+"="+strconv.Quote(v))
		}
		sort.Strings(keys)
		got = append(got, strings.Join(keys, " "))
	}
	sort.Strings(got)
	want := []string{`foo="bar"`, `offset="0"`, `offset="1" rogue="held by another consumer"`, `offset="not a number" value="\x00\xff binary"`}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("junk in Kafka:\n got %q\nwant %q", got, want)
	}
	st := in.DLQStats()
	if st.Skipped != 1 || st.Exported != 4 || stubs != 1 {
		t.Errorf("stats %+v, %d stubs in Kafka; want 4 exported, 1 skipped (too large) and its stub", st, stubs)
	}
	if why, err := e.rdb.HGet(ctx, wire.DLQStubsKey(e.stream(0)), big).Result(); err != nil || why == "" {
		t.Errorf("%s of the stub %s: %q, %v", wire.DLQStubsKey(e.stream(0)), big, why, err)
	}
	pend, err := e.rdb.XPending(ctx, dlq, wire.DLQExportGroup).Result()
	if err != nil || pend.Count != 0 {
		t.Errorf("export group: %+v %v, want nothing pending (the rogue consumer's %s taken over)", pend, err, rogue)
	}
	t.Logf("5 junk dead letters and a dead-letter key of the wrong type: %d exported as malformed, %d as a stub (over %d bytes); commit at the log end; stats %+v",
		len(got), stubs, cfg.DLQMaxBytes, st)
}

// TestDeadLettersSurviveRedisRestart: poison records are dead-lettered
// while Kafka refuses the dead-letter topic, then Redis restarts empty (no
// persistence): the commits had stopped at the poison records, so they are
// fetched again and dead-lettered again, and once Kafka accepts they are all
// exported. Then more poison records are dead-lettered and exported, and
// Redis restarts empty again: they are in Kafka. Throughout, a watcher
// checks that no commit passed a dead letter Kafka did not have; at the end
// no record is lost (each was handled or is in the dead-letter topic).
func TestDeadLettersSurviveRedisRestart(t *testing.T) {
	srv := testenv.StartRedisServer(t, "none")
	const n1, n2, n3 = 2000, 1000, 200
	e := newEnv(t, 4)
	e.useRedis(t, srv.Addr())
	testenv.Produce(t, e.brokers, e.topic, 0, n1)
	var refuse atomic.Bool
	refuse.Store(true)
	var refusals atomic.Int64
	in := startIngestWith(t, e.config(t), func(in *bridge.Ingest) {
		bridge.SetDLQRefusal(in, func() error {
			if refuse.Load() {
				refusals.Add(1)
				return kafka.TopicAuthorizationFailed
			}
			return nil
		})
	})
	handled, poison := newLedger(), newLedger()
	e.startPoisonWorker(t, handled, poison)
	watch := e.watchDLQCommits(t, poison)
	p1 := poisonCount(0, n1)

	// Phase 1: Redis restarts before the export.
	testenv.Eventually(t, 90*time.Second, func() bool {
		return poison.total() == p1 && handled.total() == n1-p1 && e.dlqLen(t) == int64(p1) && refusals.Load() >= 3
	}, "poison %d/%d, handled %d/%d, dead letters %d, refusals %d", poison.total(), p1, handled.total(), n1-p1, e.dlqLen(t), refusals.Load())
	committed := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
	end := testenv.LogEnd(t, e.brokers, e.topic, e.partitions)
	t.Logf("phase 1: %d poison records dead-lettered in Redis, none exported (%d refusals); commits %v, log ends %v",
		p1, refusals.Load(), committed, end)
	srv.Crash(t)
	srv.Start(t)
	if n, _ := e.rdb.DBSize(context.Background()).Result(); n > 0 && e.dlqLen(t) == int64(p1) {
		t.Fatalf("Redis kept its data (%d keys): the test did not restart it empty", n)
	}
	// The ingest sees the loss and fetches again from the commits, which
	// stopped at the poison records: they are dead-lettered again.
	testenv.Eventually(t, 120*time.Second, func() bool { return e.dlqLen(t) == int64(p1) },
		"dead letters in the restarted Redis: %d, want %d again", e.dlqLen(t), p1)
	again := 0
	for _, offs := range poison.snapshot() {
		for _, c := range offs {
			if c >= 2 {
				again++
			}
		}
	}
	refuse.Store(false)
	testenv.Eventually(t, 120*time.Second, func() bool { return e.allCommitted(t) }, "commits did not reach the log end: %+v", in.DLQStats())
	lost, dups := e.lostRecords(t, handled)
	t.Logf("phase 1: after the restart %d poison records dead-lettered again; Kafka accepted: commits at the log end, lost=%d, %d dead letters in Kafka (%d duplicates)",
		again, lost, len(e.kafkaDLQ(t)), dups)
	if again != p1 {
		t.Errorf("%d of %d poison records were dead-lettered again after the restart", again, p1)
	}

	// Phase 2: Redis restarts after the export.
	testenv.Produce(t, e.brokers, e.topic, n1, n2)
	p2 := poisonCount(n1, n2)
	testenv.Eventually(t, 120*time.Second, func() bool { return poison.total() == p1+p2 && e.allCommitted(t) },
		"phase 2: poison %d/%d, commits not at the log end", poison.total(), p1+p2)
	srv.Crash(t)
	srv.Start(t)
	testenv.Produce(t, e.brokers, e.topic, n1+n2, n3)
	p3 := poisonCount(n1+n2, n3)
	testenv.Eventually(t, 120*time.Second, func() bool { return poison.total() == p1+p2+p3 && e.allCommitted(t) },
		"phase 2: after the restart, poison %d/%d, commits not at the log end", poison.total(), p1+p2+p3)
	watch.finish(t)

	dls := e.kafkaDLQ(t)
	values := map[string]int{}
	for _, d := range dls {
		values[string(d.Value)]++
	}
	for i := 0; i < n1+n2+n3; i++ {
		if i%poisonEvery == 3 && values["v"+strconv.Itoa(i)] == 0 {
			t.Errorf("poison record v%d is not in %s", i, e.dlqTopic())
		}
	}
	lost, dups = e.lostRecords(t, handled)
	if lost != 0 {
		t.Errorf("%d records lost", lost)
	}
	st := in.DLQStats()
	t.Logf("%d records, %d poison, Redis restarted empty twice (before and after the export): %d dead letters in %s (%d duplicates: exported, then dead-lettered again before the commit passed them), lost=%d; %d commit checks, 0 past a dead letter not in Kafka; stats %+v",
		n1+n2+n3, p1+p2+p3, len(dls), e.dlqTopic(), dups, lost, watch.checks.Load(), st)
}
