package main

// Regression tests from the review of the durable dead letters (branch
// review-dlq): "kbridge dlq" and the export state it reads. Each asserts what
// docs/wire.md "Durability of dead letters" promises; each failed before the
// fixes of branch dlq2 and passes since. The comments keep the review's
// account of the finding each one guards against.

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
	"github.com/kbridge/kbridge/worker"
)

// startIngestCfg runs an ingest of e with changes to its configuration;
// the returned function stops it (also when the test ends).
func (e *dlqTestEnv) startIngestCfg(t *testing.T, change func(*bridge.Config)) (*bridge.Ingest, func()) {
	cfg := bridge.Config{Brokers: e.brokers, Topics: []string{e.topic}, Group: e.group, Redis: e.rdb,
		Prefix: e.prefix, CommitInterval: 50 * time.Millisecond, AllowEviction: true}
	if change != nil {
		change(&cfg)
	}
	in, err := bridge.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return in, stop
}

// unexportedDeadLetter writes a dead letter of offset 3 to partition 0's
// dead-letter stream, with the export group made at 0 (as the ingest makes
// it) when group is true; it returns its ref.
func (e *dlqTestEnv) unexportedDeadLetter(t *testing.T, group bool) (ref, dlq string) {
	ctx := context.Background()
	s := wire.StreamKey(e.prefix, e.topic, 0)
	dlq = wire.DLQKey(s)
	rec := wire.Record{Topic: e.topic, Partition: 0, Offset: 3, Time: time.UnixMilli(1700000000000), Value: []byte("v3")}
	fields := wire.DeadLetterFields(toMap(rec.AppendFields(nil)), wire.DLQInfo{Reason: wire.ReasonRejected, Group: "workers", Consumer: "c",
		Deliveries: 1, Stream: s, ID: "3-1", Time: time.Now()})
	id, err := e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: dlq, Values: fields}).Result()
	if err != nil {
		t.Fatal(err)
	}
	if group {
		if err := e.rdb.XGroupCreate(ctx, dlq, wire.DLQExportGroup, "0").Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.rdb.SAdd(ctx, wire.RegistryKey(e.prefix), s).Err(); err != nil {
		t.Fatal(err)
	}
	return wire.DeadLetterRef(e.topic, 0, id), dlq
}

// TestDLQDeleteRefusesUnexported — finding "delete does not look at the
// export" (LOSS by an operator told the opposite). "kbridge dlq delete"
// removes a dead letter the ingest has not exported yet without a word, while
// its usage says "Kafka keeps its copy until its retention": there is no
// copy, and the commit, no longer held by it, passes the record.
func TestDLQDeleteRefusesUnexported(t *testing.T) {
	e := newDLQTestEnv(t, 1)
	ref, dlq := e.unexportedDeadLetter(t, true)
	out, errs, code := e.cli(t, "dlq", "list")
	if !strings.Contains(out, "not yet") {
		t.Fatalf("dlq list: exit %d, want it not yet in Kafka\n%s%s", code, out, errs)
	}
	out, errs, code = e.cli(t, "dlq", "delete", ref)
	n, _ := e.rdb.XLen(context.Background(), dlq).Result()
	if code == 0 || n != 1 {
		t.Errorf("LOSS: dlq delete of a dead letter not in Kafka yet: exit %d, %q %q, XLEN now %d (usage: %q)",
			code, strings.TrimSpace(out), strings.TrimSpace(errs), n, "delete dead letters for good (from Redis; Kafka keeps its copy until its retention)")
	}
}

// TestDLQReplayRefusesWithoutExportGroup — finding "unknown export state is
// replayed as if exported" (LOSS). The ingest is down (a deploy, a crash)
// while the workers drain the stream and dead-letter record 3 in a partition
// whose dead-letter stream did not exist: no export group yet, so "kbridge
// dlq list" shows IN KAFKA "-" and "kbridge dlq replay --all" moves it,
// without --force, to the replay stream — the very case the refusal of
// unexported dead letters exists for. The ingest comes back and commits past
// it (the dead-letter stream is empty); Redis restarts without persistence
// before the workers handled the replay: the record is nowhere.
func TestDLQReplayRefusesWithoutExportGroup(t *testing.T) {
	srv := testenv.StartRedisServer(t, "none")
	e := newDLQTestEnv(t, 1)
	e.rdb = redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { e.rdb.Close() })
	e.redisURL = "redis://" + srv.Addr() + "/0"
	ctx := context.Background()
	testenv.Produce(t, e.brokers, e.topic, 0, 10)
	s := wire.StreamKey(e.prefix, e.topic, 0)

	// The ingest appends the records, then goes away.
	_, stop := e.startIngestCfg(t, nil)
	testenv.Eventually(t, 60*time.Second, func() bool { n, _ := e.rdb.XLen(ctx, s).Result(); return n == 10 }, "records not appended")
	stop()
	// The workers drain the stream: 3 is poison.
	stopWorker := e.runWorker(t, func(m *worker.Message) bool { return m.Offset == 3 }, func(*worker.Message) {})
	testenv.Eventually(t, 30*time.Second, func() bool {
		n, _ := e.rdb.XLen(ctx, wire.DLQKey(s)).Result()
		p, _ := e.rdb.XPending(ctx, s, "workers").Result()
		return n == 1 && p != nil && p.Count == 0
	}, "record 3 not dead-lettered")
	stopWorker()
	out, _, _ := e.cli(t, "dlq", "list")
	t.Logf("dlq list while the ingest is down:\n%s", out)
	// The operator replays (the handler is fixed, say; no --force).
	out, errs, code := e.cli(t, "dlq", "replay", "--all")
	t.Logf("dlq replay --all: exit %d: %s %s", code, strings.TrimSpace(out), strings.TrimSpace(errs))
	replayed := code == 0 && strings.Contains(out, "replayed 1")
	// The ingest comes back: nothing holds the commit any more.
	e.startIngestCfg(t, nil)
	testenv.Eventually(t, 60*time.Second, func() bool { return e.allCommitted(t) }, "commit not at the log end")
	srv.Crash(t)
	srv.Start(t)
	if replayed {
		dls := readDLQTopic(t, e.brokers, wire.DLQTopic(wire.DefaultDLQTopic, e.topic))
		t.Errorf("LOSS: a dead letter with no export group (IN KAFKA \"-\") was replayed without --force; the commit went to the log end; after a Redis restart record 3 is in no Redis stream and %d dead letters are in Kafka",
			dls)
	}
}

// readDLQTopic counts the messages of a dead-letter topic (0 if missing).
func readDLQTopic(t *testing.T, brokers []string, topic string) int {
	c := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: &kafka.Transport{}}
	res, err := c.ListOffsets(context.Background(), &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: {kafka.LastOffsetOf(0)}}})
	if err != nil {
		return 0
	}
	for _, o := range res.Topics[topic] {
		if o.Error == nil {
			return int(o.LastOffset)
		}
	}
	return 0
}

// TestDLQStubNotShownAsExported — finding "a skipped dead letter looks
// exported" (WRONG, and a LOSS path through replay). A dead letter over
// --dlq-max-bytes is skipped: XACKed in the export group, so "kbridge dlq
// list" and "show" say IN KAFKA "yes" — the alert in docs/operations.md
// tells the operator to copy it out with "kbridge dlq show", which then says
// it is in Kafka — and "kbridge dlq replay" moves it to the replay stream
// without --force, though it is in Kafka nowhere.
func TestDLQStubNotShownAsExported(t *testing.T) {
	e := newDLQTestEnv(t, 1)
	ctx := context.Background()
	big := strings.Repeat("x", 8<<10)
	w := &kafka.Writer{Addr: kafka.TCP(e.brokers...), Topic: e.topic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	if err := w.WriteMessages(ctx, kafka.Message{Value: []byte("ok")}, kafka.Message{Value: []byte("poison" + big)}, kafka.Message{Value: []byte("ok")}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	in, _ := e.startIngestCfg(t, func(c *bridge.Config) { c.DLQMaxBytes = 4 << 10 })
	e.runWorker(t, func(m *worker.Message) bool { return strings.HasPrefix(string(m.Value), "poison") }, func(*worker.Message) {})
	testenv.Eventually(t, 60*time.Second, func() bool { return e.allCommitted(t) && in.DLQStats().Skipped == 1 },
		"commit not at the log end, or nothing skipped: %+v", in.DLQStats())
	out, errs, code := e.cli(t, "dlq", "list", "--json")
	dls := jsonLines[deadLetterJSON](t, out)
	if code != 0 || len(dls) != 1 {
		t.Fatalf("dlq list: exit %d\n%s%s", code, out, errs)
	}
	if dls[0].InKafka != nil && *dls[0].InKafka {
		t.Errorf("WRONG: dlq list says in_kafka=true for %s, which the ingest skipped (over --dlq-max-bytes; %d in %s)",
			dls[0].Ref, readDLQTopic(t, e.brokers, wire.DLQTopic(wire.DefaultDLQTopic, e.topic)), wire.DLQTopic(wire.DefaultDLQTopic, e.topic))
	}
	out, errs, code = e.cli(t, "dlq", "replay", dls[0].Ref)
	if code == 0 {
		t.Errorf("LOSS path: dlq replay (no --force) moved the skipped dead letter %s, in Kafka nowhere, to the replay stream: %s %s",
			dls[0].Ref, strings.TrimSpace(out), strings.TrimSpace(errs))
	}
}

// TestDLQReplayFromKafkaDuplicateOnce — finding "replay --from-kafka reads the
// replayed set once per stream, before it replays" (DUPLICATE). The same
// dead letter exported twice (same ref: the documented duplicate, an ingest
// that died between Kafka's acknowledgement and its XACK), after another dead
// letter of the partition that is no longer in Redis: the first copy is
// replayed from Redis and recorded, but the second is checked against the
// replayed set read before that, and is replayed again.
func TestDLQReplayFromKafkaDuplicateOnce(t *testing.T) {
	e := newDLQTestEnv(t, 1)
	ctx := context.Background()
	ref, _ := e.unexportedDeadLetter(t, false)
	s := wire.StreamKey(e.prefix, e.topic, 0)
	xs, err := e.rdb.XRange(ctx, wire.DLQKey(s), "-", "+").Result()
	if err != nil || len(xs) != 1 {
		t.Fatal(xs, err)
	}
	dlqTopic := wire.DLQTopic(wire.DefaultDLQTopic, e.topic)
	testenv.CreateTopic(t, e.brokers, dlqTopic, 1)
	msg := func(id string, values map[string]any) kafka.Message {
		m := wire.EncodeDLQMessage(e.topic, 0, id, values, time.Now())
		km := kafka.Message{Key: m.Key, Value: m.Value, Time: m.Time}
		for _, h := range m.Headers {
			km.Headers = append(km.Headers, kafka.Header{Key: h.Key, Value: h.Value})
		}
		return km
	}
	r1 := wire.Record{Topic: e.topic, Partition: 0, Offset: 1, Value: []byte("v1")}
	gone := toMap(wire.DeadLetterFields(toMap(r1.AppendFields(nil)),
		wire.DLQInfo{Reason: wire.ReasonRejected, Group: "workers", Time: time.Now()}))
	_, _, id, _ := worker.ParseRef(ref)
	w := &kafka.Writer{Addr: kafka.TCP(e.brokers...), Topic: dlqTopic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	if err := w.WriteMessages(ctx, msg("1-0", gone), msg(id, xs[0].Values), msg(id, xs[0].Values)); err != nil {
		t.Fatal(err)
	}
	w.Close()
	out, errs, code := e.cli(t, "dlq", "replay", "--from-kafka", "--all", "--topic", e.topic)
	n, _ := e.rdb.XLen(ctx, wire.ReplayKey(s)).Result()
	if n != 2 {
		t.Errorf("DUPLICATE: replay --from-kafka of [v1 (not in Redis), %s, %s again] put %d entries in the replay stream, want 2 (exit %d: %s %s)",
			ref, ref, n, code, strings.TrimSpace(out), strings.TrimSpace(errs))
	}
}
