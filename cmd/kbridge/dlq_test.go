package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
	"github.com/kbridge/kbridge/worker"
)

// dlqTestEnv is a topic bridged by an ingest of the test, with a worker
// that rejects the records the test calls poison.
type dlqTestEnv struct {
	brokers              []string
	rdb                  *redis.Client
	redisURL             string
	topic, prefix, group string
	parts                int
}

func newDLQTestEnv(t *testing.T, parts int) *dlqTestEnv {
	t.Log(testenv.String())
	r := testenv.NewRedis(t)
	e := &dlqTestEnv{brokers: testenv.Kafka(t), rdb: r.Client(t), redisURL: "redis://" + r.Addr + "/0", parts: parts}
	e.topic, e.prefix, e.group = testenv.Name(t), testenv.Name(t), testenv.Name(t)
	testenv.CreateTopic(t, e.brokers, e.topic, parts)
	return e
}

// cli runs kbridge with the env's Redis, prefix and brokers.
func (e *dlqTestEnv) cli(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	all := []string{"--redis-url", e.redisURL, "--prefix", e.prefix}
	if len(args) > 1 && args[0] == "dlq" && args[1] != "delete" {
		// Flags go before the REFs.
		args = append([]string{args[0], args[1], "--brokers", strings.Join(e.brokers, ",")}, args[2:]...)
	}
	return runCLI(t, append(all, args...)...)
}

// runIngest runs an ingest until the test ends.
func (e *dlqTestEnv) runIngest(t *testing.T) *bridge.Ingest {
	in, err := bridge.New(bridge.Config{Brokers: e.brokers, Topics: []string{e.topic}, Group: e.group, Redis: e.rdb,
		Prefix: e.prefix, CommitInterval: 50 * time.Millisecond, AllowEviction: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return in
}

// runWorker runs a worker until stop is called (or the test ends): it
// rejects the records poison says, and records the others in handled.
func (e *dlqTestEnv) runWorker(t *testing.T, poison func(*worker.Message) bool, handled func(*worker.Message)) (stop func()) {
	w, err := worker.New(worker.Config{Redis: e.rdb, Prefix: e.prefix, DiscoveryInterval: 100 * time.Millisecond,
		BlockTimeout: 100 * time.Millisecond,
		Handler: func(_ context.Context, m *worker.Message) error {
			if poison(m) {
				return worker.Permanent(errors.New("poison " + string(m.Value)))
			}
			handled(m)
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func (e *dlqTestEnv) allCommitted(t *testing.T) bool {
	end := testenv.LogEnd(t, e.brokers, e.topic, e.parts)
	c := testenv.Committed(t, e.brokers, e.group, e.topic, e.parts)
	for p, off := range end {
		if c[p] != off {
			return false
		}
	}
	return true
}

func jsonLines[T any](t *testing.T, out string) []T {
	t.Helper()
	var res []T
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var v T
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("not JSON: %q: %v", line, err)
		}
		res = append(res, v)
	}
	return res
}

// TestDLQFromKafka: dead letters exported by the ingest are listed, shown
// and replayed from Kafka after Redis lost them ("kbridge dlq list|show|
// replay --from-kafka"); a replay from Kafka is not repeated unless asked
// (--again), and the replayed records reach the workers again.
func TestDLQFromKafka(t *testing.T) {
	const n = 120
	e := newDLQTestEnv(t, 2)
	testenv.Produce(t, e.brokers, e.topic, 0, n)
	poisonValue := func(v []byte) bool {
		i, err := strconv.Atoi(strings.TrimPrefix(string(v), "v"))
		return err == nil && i%20 == 7
	}
	const want = n / 20
	e.runIngest(t)
	var mu sync.Mutex
	replayed := map[string]int{}
	fixed := false
	stop := e.runWorker(t, func(m *worker.Message) bool {
		mu.Lock()
		defer mu.Unlock()
		return poisonValue(m.Value) && !fixed
	}, func(m *worker.Message) {
		mu.Lock()
		defer mu.Unlock()
		if m.Replayed {
			replayed[string(m.Value)]++
		}
	})
	testenv.Eventually(t, 60*time.Second, func() bool { return e.allCommitted(t) }, "commits never reached the log end")

	// In Redis, every dead letter is in Kafka.
	out, errs, code := e.cli(t, "dlq", "list", "--topic", e.topic, "--json")
	redisDLs := jsonLines[deadLetterJSON](t, out)
	if code != 0 || len(redisDLs) != want {
		t.Fatalf("dlq list: exit %d, %d dead letters, want %d\n%s%s", code, len(redisDLs), want, out, errs)
	}
	for _, d := range redisDLs {
		if d.InKafka == nil || !*d.InKafka {
			t.Errorf("dlq list: %s not in Kafka: %+v", d.Ref, d)
		}
	}

	// In Kafka, the same ones, still in Redis.
	out, errs, code = e.cli(t, "dlq", "list", "--from-kafka", "--topic", e.topic, "--json")
	kafkaDLs := jsonLines[kafkaDeadLetterJSON](t, out)
	if code != 0 || len(kafkaDLs) != want {
		t.Fatalf("dlq list --from-kafka: exit %d, %d dead letters, want %d\n%s%s", code, len(kafkaDLs), want, out, errs)
	}
	for _, d := range kafkaDLs {
		if d.InRedis == nil || !*d.InRedis || !poisonValue(d.Value) || d.Topic != e.topic || d.Reason != wire.ReasonRejected {
			t.Errorf("dlq list --from-kafka: %+v", d)
		}
	}

	// Redis loses them.
	stop()
	for p := 0; p < e.parts; p++ {
		e.rdb.Del(context.Background(), wire.DLQKey(wire.StreamKey(e.prefix, e.topic, p)))
	}
	out, _, code = e.cli(t, "dlq", "list", "--topic", e.topic)
	if code != 0 || !strings.Contains(out, "no dead letters") {
		t.Fatalf("dlq list after the loss: exit %d\n%s", code, out)
	}
	out, errs, code = e.cli(t, "dlq", "list", "--from-kafka", "--topic", e.topic, "--partition", "1")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || !strings.HasPrefix(lines[0], "REF") || !strings.Contains(out, " no ") {
		t.Fatalf("dlq list --from-kafka --partition 1: exit %d\n%s%s", code, out, errs)
	}
	t.Logf("dlq list --from-kafka --partition 1 after Redis lost the dead letters:\n%s", out)
	k0 := kafkaDLs[0]
	out, errs, code = e.cli(t, "dlq", "show", k0.KafkaRef)
	if code != 0 || !strings.Contains(out, "value:        "+string(k0.Value)) || !strings.Contains(out, "in Redis:     no") ||
		!strings.Contains(out, fmt.Sprintf("record:       %s/%d offset %d", e.topic, k0.Partition, k0.Offset)) {
		t.Fatalf("dlq show %s: exit %d\n%s%s", k0.KafkaRef, code, out, errs)
	}

	// Replayed from Kafka, once.
	out, errs, code = e.cli(t, "dlq", "replay", "--from-kafka", "--all", "--topic", e.topic)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("replayed %d dead letter(s)", want)) {
		t.Fatalf("dlq replay --from-kafka: exit %d\n%s%s", code, out, errs)
	}
	out, errs, code = e.cli(t, "dlq", "replay", "--from-kafka", "--all", "--topic", e.topic)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("replayed 0 dead letter(s); 0 without a full copy in Kafka, %d replayed before", want)) {
		t.Fatalf("dlq replay --from-kafka again: exit %d\n%s%s", code, out, errs)
	}
	var inReplay int64
	for p := 0; p < e.parts; p++ {
		s := wire.StreamKey(e.prefix, e.topic, p)
		xs, err := e.rdb.XRange(context.Background(), wire.ReplayKey(s), "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range xs {
			r, err := wire.Decode(x.Values)
			info, _ := wire.DecodeDLQInfo(x.Values)
			if err != nil || r.Partition != p || !poisonValue(r.Value) || string(r.Key) != "k"+strings.TrimPrefix(string(r.Value), "v") || info.Group != "workers" {
				t.Errorf("replay entry %s of %s: %+v %+v %v", x.ID, s, r, info, err)
			}
		}
		inReplay += int64(len(xs))
	}
	if inReplay != want {
		t.Errorf("%d entries in the replay streams, want %d", inReplay, want)
	}

	// The workers, fixed, handle them.
	mu.Lock()
	fixed = true
	mu.Unlock()
	e.runWorker(t, func(*worker.Message) bool { return false }, func(m *worker.Message) {
		mu.Lock()
		defer mu.Unlock()
		if m.Replayed {
			replayed[string(m.Value)]++
		}
	})
	handledAgain := func() int { mu.Lock(); defer mu.Unlock(); return len(replayed) }
	testenv.Eventually(t, 30*time.Second, func() bool { return handledAgain() == want },
		"replayed records handled: fewer than %d", want)

	out, errs, code = e.cli(t, "dlq", "replay", "--again", k0.KafkaRef)
	if code != 0 || !strings.Contains(out, "replayed 1 dead letter(s)") {
		t.Fatalf("dlq replay %s --again: exit %d\n%s%s", k0.KafkaRef, code, out, errs)
	}
	t.Logf("%d records, %d dead letters: listed in Redis (all in Kafka) and in Kafka, lost from Redis, shown and replayed from Kafka (a second replay skipped all %d), handled again: %d",
		n, want, want, handledAgain())
}

// TestDLQReplayWaitsForExport: a dead letter the ingest has not exported
// yet is not replayed from Redis (the replay stream would then hold the only
// copy), unless --force.
func TestDLQReplayWaitsForExport(t *testing.T) {
	e := newDLQTestEnv(t, 1)
	ctx := context.Background()
	s := wire.StreamKey(e.prefix, e.topic, 0)
	dlq := wire.DLQKey(s)
	rec := wire.Record{Topic: e.topic, Partition: 0, Offset: 3, Time: time.UnixMilli(1700000000000), Value: []byte("v3")}
	fields := wire.DeadLetterFields(toMap(rec.AppendFields(nil)), wire.DLQInfo{Reason: wire.ReasonRejected, Group: "workers", Consumer: "c",
		Deliveries: 1, Stream: s, ID: "3-1", Time: time.Now()})
	id, err := e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: dlq, Values: fields}).Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.XGroupCreate(ctx, dlq, wire.DLQExportGroup, "0").Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.SAdd(ctx, wire.RegistryKey(e.prefix), s).Err(); err != nil {
		t.Fatal(err)
	}
	ref := wire.DeadLetterRef(e.topic, 0, id)
	out, errs, code := e.cli(t, "dlq", "list")
	if code != 0 || !strings.Contains(out, "not yet") {
		t.Errorf("dlq list: exit %d, want the dead letter shown not yet in Kafka\n%s%s", code, out, errs)
	}
	out, errs, code = e.cli(t, "dlq", "replay", ref)
	if code != 1 || !strings.Contains(errs, "not in Kafka yet") || !strings.Contains(out, "replayed 0") {
		t.Fatalf("dlq replay of an unexported dead letter: exit %d\n%s%s", code, out, errs)
	}
	refused := strings.TrimSpace(errs)
	if n, _ := e.rdb.XLen(ctx, dlq).Result(); n != 1 {
		t.Fatalf("the dead letter left its stream: XLEN %d", n)
	}
	out, errs, code = e.cli(t, "dlq", "replay", "--force", ref)
	if code != 0 || !strings.Contains(out, "replayed 1") {
		t.Fatalf("dlq replay --force: exit %d\n%s%s", code, out, errs)
	}
	if n, _ := e.rdb.XLen(ctx, wire.ReplayKey(s)).Result(); n != 1 {
		t.Fatalf("replay stream XLEN %d, want 1", n)
	}
	t.Logf("unexported dead letter: replay refused (exit 1: %q), replayed with --force", refused)
}

func toMap(fields []any) map[string]any {
	m := map[string]any{}
	for i := 0; i+1 < len(fields); i += 2 {
		m[fields[i].(string)] = fields[i+1]
	}
	return m
}

// TestDLQMetrics: the ingest's dead-letter export counters and gauges are
// exported as kbridge_ingest_dlq_*, beside the other ingest metrics.
func TestDLQMetrics(t *testing.T) {
	st := bridge.DLQStats{Exported: 7, Skipped: 1, Errors: 3, Unexported: 2, HeldPartitions: 1}
	reg := newRegistry()
	reg.MustRegister(collectorList{newIngestCollector(func() bridge.Stats { return bridge.Stats{} }), newDLQCollector(func() bridge.DLQStats { return st })})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				got[mf.GetName()] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				got[mf.GetName()] = m.GetGauge().GetValue()
			}
		}
	}
	want := map[string]float64{"kbridge_ingest_dlq_exported_total": 7, "kbridge_ingest_dlq_skipped_total": 1,
		"kbridge_ingest_dlq_export_errors_total": 3, "kbridge_ingest_dlq_unexported": 2, "kbridge_ingest_dlq_held_partitions": 1,
		"kbridge_ingest_assigned_partitions": 0}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}
