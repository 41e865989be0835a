package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// addDeadLetter writes a dead letter of record offset off to partition p's
// dead-letter stream and returns its entry ID.
func (e *dlqTestEnv) addDeadLetter(t *testing.T, p int, off int64) string {
	t.Helper()
	ctx := context.Background()
	s := wire.StreamKey(e.prefix, e.topic, p)
	rec := wire.Record{Topic: e.topic, Partition: p, Offset: off, Time: time.UnixMilli(1700000000000), Value: []byte("v")}
	fields := wire.DeadLetterFields(toMap(rec.AppendFields(nil)), wire.DLQInfo{Reason: wire.ReasonRejected, Group: "workers", Consumer: "c",
		Deliveries: 1, Stream: s, ID: wire.EntryID(off), Time: time.Now()})
	id, err := e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: wire.DLQKey(s), Values: fields}).Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.SAdd(ctx, wire.RegistryKey(e.prefix), s).Err(); err != nil {
		t.Fatal(err)
	}
	return id
}

// exportAs puts partition p's dead letters in the export state the ingest
// would leave: "none" (export group at 0, nothing read), "full" (read and
// acknowledged), "stub" (acknowledged and recorded as stubs) or "unknown"
// (no export group).
func (e *dlqTestEnv) exportAs(t *testing.T, p int, state string) {
	t.Helper()
	ctx := context.Background()
	s := wire.StreamKey(e.prefix, e.topic, p)
	dlq := wire.DLQKey(s)
	if state == "unknown" {
		return
	}
	if err := e.rdb.XGroupCreate(ctx, dlq, wire.DLQExportGroup, "0").Err(); err != nil {
		t.Fatal(err)
	}
	if state == "none" {
		return
	}
	res, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: wire.DLQExportGroup, Consumer: wire.DLQExportConsumer,
		Streams: []string{dlq, ">"}, Count: 100}).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range res[0].Messages {
		if state == "stub" {
			if err := e.rdb.HSet(ctx, wire.DLQStubsKey(s), m.ID, "dead letter of about 2000000 bytes, over --dlq-max-bytes 1048576").Err(); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.rdb.XAck(ctx, dlq, wire.DLQExportGroup, m.ID).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDLQTakeOutNeedsFullCopy: "kbridge dlq" tells the four export states
// of a dead letter in Redis apart (exported in full, not yet, unknown — no
// export group — and a stub only), and "delete" and "replay" take out of
// Redis only the ones Kafka has in full, naming each other one with the
// reason (exit 1), unless --force. Stubs in Kafka are listed as such, and
// "replay --from-kafka" never replays one: from Redis only with --force,
// not at all when Redis lost it.
func TestDLQTakeOutNeedsFullCopy(t *testing.T) {
	e := newDLQTestEnv(t, 4)
	ctx := context.Background()
	states := []string{"full", "none", "unknown", "stub"}
	refs := map[string]string{}
	ids := map[string]string{}
	for p, st := range states {
		ids[st] = e.addDeadLetter(t, p, 10+int64(p))
		e.exportAs(t, p, st)
		refs[st] = wire.DeadLetterRef(e.topic, p, ids[st])
	}
	out, errs, code := e.cli(t, "dlq", "list", "--json")
	dls := jsonLines[deadLetterJSON](t, out)
	if code != 0 || len(dls) != 4 {
		t.Fatalf("dlq list --json: exit %d\n%s%s", code, out, errs)
	}
	inKafka := map[string]string{"full": "true", "none": "false", "unknown": "null", "stub": "false"}
	for _, d := range dls {
		for st, ref := range refs {
			if d.Ref != ref {
				continue
			}
			got := "null"
			if d.InKafka != nil {
				got = map[bool]string{true: "true", false: "false"}[*d.InKafka]
			}
			if d.KafkaCopy != st || got != inKafka[st] || (st == "stub") != (d.Stub != "") {
				t.Errorf("%s (%s): kafka_copy %q in_kafka %s stub %q; want %q %s", ref, st, d.KafkaCopy, got, d.Stub, st, inKafka[st])
			}
		}
	}
	out, _, _ = e.cli(t, "dlq", "list")
	for _, want := range []string{"yes", "not yet", "unknown", "stub only"} {
		if !strings.Contains(out, want) {
			t.Errorf("dlq list does not say %q:\n%s", want, out)
		}
	}
	out, _, _ = e.cli(t, "dlq", "show", refs["stub"])
	if !strings.Contains(out, "in Kafka:     stub only: dead letter of about 2000000 bytes") {
		t.Errorf("dlq show of a stub:\n%s", out)
	}

	// Stubs in Kafka: one of a dead letter Redis still has, one of one it lost.
	dlqTopic := wire.DLQTopic(wire.DefaultDLQTopic, e.topic)
	testenv.CreateTopic(t, e.brokers, dlqTopic, 4)
	stub := func(p int, id string, off int64) kafka.Message {
		rec := wire.Record{Topic: e.topic, Partition: p, Offset: off, Time: time.Now(), Value: []byte(strings.Repeat("x", 5000))}
		values := wire.DeadLetterFields(toMap(rec.AppendFields(nil)), wire.DLQInfo{Reason: wire.ReasonRejected, Group: "workers", Time: time.Now()})
		m := wire.EncodeDLQMessage(e.topic, p, id, toMap(values), time.Now())
		m = wire.StubDLQMessage(m, wire.DLQMessageSize(m), 4096)
		km := kafka.Message{Partition: p, Key: m.Key, Value: m.Value, Time: m.Time}
		for _, h := range m.Headers {
			km.Headers = append(km.Headers, kafka.Header{Key: h.Key, Value: h.Value})
		}
		return km
	}
	w := &kafka.Writer{Addr: kafka.TCP(e.brokers...), Topic: dlqTopic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond,
		Balancer: kafka.BalancerFunc(func(m kafka.Message, _ ...int) int { return m.Partition })}
	if err := w.WriteMessages(ctx, stub(3, ids["stub"], 13), stub(3, "1-0", 7)); err != nil {
		t.Fatal(err)
	}
	w.Close()
	out, errs, code = e.cli(t, "dlq", "list", "--from-kafka", "--topic", e.topic, "--json")
	kdls := jsonLines[kafkaDeadLetterJSON](t, out)
	if code != 0 || len(kdls) != 2 || kdls[0].Stub == "" || kdls[1].Stub == "" || kdls[0].Value != nil {
		t.Fatalf("dlq list --from-kafka --json: exit %d\n%s%s", code, out, errs)
	}
	out, _, _ = e.cli(t, "dlq", "list", "--from-kafka", "--topic", e.topic)
	if !strings.Contains(out, "@13 (stub)") || !strings.Contains(out, "@7 (stub)") {
		t.Errorf("dlq list --from-kafka does not mark the stubs:\n%s", out)
	}
	s3 := wire.StreamKey(e.prefix, e.topic, 3)
	out, errs, code = e.cli(t, "dlq", "replay", "--from-kafka", "--all", "--topic", e.topic)
	n, _ := e.rdb.XLen(ctx, wire.ReplayKey(s3)).Result()
	if code != 1 || n != 0 || !strings.Contains(out, "replayed 0 dead letter(s); 2 without a full copy in Kafka") ||
		!strings.Contains(errs, "--force to replay it from Redis anyway") || !strings.Contains(errs, "nothing to replay") {
		t.Fatalf("replay --from-kafka of two stubs: exit %d, replay stream %d\n%s%s", code, n, out, errs)
	}
	t.Logf("replay --from-kafka of two stubs (one still in Redis): exit 1, nothing replayed:\n%s", strings.TrimSpace(errs))

	// Redis: delete and replay take out the exported one only.
	out, errs, code = e.cli(t, "dlq", "replay", "--all")
	if code != 1 || !strings.Contains(out, "replayed 1 dead letter(s); 3 without a full copy in Kafka") {
		t.Fatalf("dlq replay --all: exit %d\n%s%s", code, out, errs)
	}
	ids["full"] = e.addDeadLetter(t, 0, 20) // the export group made at 0 is past it: not exported
	out, errs, code = e.cli(t, "dlq", "delete", "--all")
	for _, why := range []string{"not in Kafka yet", "export state is unknown", "only a stub", "offset 13 of " + e.topic + " partition 3"} {
		if !strings.Contains(errs, why) {
			t.Errorf("dlq delete --all does not say %q:\n%s", why, errs)
		}
	}
	var left int64
	for p := range states {
		n, _ := e.rdb.XLen(ctx, wire.DLQKey(wire.StreamKey(e.prefix, e.topic, p))).Result()
		left += n
	}
	if code != 1 || !strings.Contains(out, "deleted 0 dead letter(s); 4 without a full copy in Kafka: left alone") || left != 4 {
		t.Fatalf("dlq delete --all: exit %d, %d left\n%s%s", code, left, out, errs)
	}
	t.Logf("dlq delete --all: exit 1, %s\n%s", strings.TrimSpace(out), strings.TrimSpace(errs))
	out, errs, code = e.cli(t, "dlq", "delete", "--all", "--force")
	if code != 0 || !strings.Contains(out, "deleted 4 dead letter(s)") {
		t.Fatalf("dlq delete --all --force: exit %d\n%s%s", code, out, errs)
	}
}
