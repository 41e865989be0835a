package kfetch

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kbridge/kbridge/internal/testenv"
)

// producedRec is a record the test wrote, as the broker acknowledged it.
type producedRec struct {
	key       string
	value     []byte // nil: tombstone
	committed bool
}

// TestFetchCompacted reads a compacted topic after the log cleaner ran:
// offsets with gaps, batches whose tail records were removed, aborted
// transactions cleaned away, tombstones. The fetcher must deliver exactly
// surviving committed records (each at the offset it was written at), every
// key's latest value, reach the log end, and not spin there.
//
// On the stand-in, kfake compacts on demand. With KAFKA_BROKERS set, the test
// starts a broker of its own whose cleaner wakes every 100ms (the shared
// broker's 15s default cannot change) and waits until it has cleaned.
func TestFetchCompacted(t *testing.T) {
	var brokers []string
	var compact func()
	if testenv.RealKafka() {
		t.Setenv("KAFKA_EXTRA_PROPS", "log.cleaner.backoff.ms=100")
		k := startOwnBroker(t)
		brokers = []string{k.Addr()}
	} else {
		c, err := kfake.NewCluster(kfake.NumBrokers(1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		brokers, compact = c.ListenAddrs(), c.Compact
	}
	topic := testenv.Name(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	admin := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 30 * time.Second}
	res, err := admin.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: 1, ReplicationFactor: 1,
		ConfigEntries: []kafka.ConfigEntry{
			{ConfigName: "cleanup.policy", ConfigValue: "compact"},
			{ConfigName: "segment.ms", ConfigValue: "100"},
			{ConfigName: "min.cleanable.dirty.ratio", ConfigValue: "0.01"},
			{ConfigName: "delete.retention.ms", ConfigValue: "100"},
			{ConfigName: "min.compaction.lag.ms", ConfigValue: "0"},
		},
	}}})
	if err == nil {
		err = res.Errors[topic]
	}
	if err != nil {
		t.Fatalf("create %s: %v", topic, err)
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.TransactionalID(topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	written := map[int64]producedRec{}
	const rounds = 12
	for r := range rounds {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		var rs []*kgo.Record
		for j := range 10 {
			if (j+r)%3 == 0 && r < rounds-1 {
				continue
			}
			key := fmt.Sprintf("k%d", j)
			var value []byte
			if r != rounds-2 || j > 1 {
				value = fmt.Appendf(nil, "r%d-%s", r, key)
			} // else: tombstones for k0, k1
			if r == rounds-1 && j != 9 {
				continue // the last round: one record, in the active segment
			}
			rs = append(rs, &kgo.Record{Key: []byte(key), Value: value})
		}
		results := cl.ProduceSync(ctx, rs...)
		if err := results.FirstErr(); err != nil {
			t.Fatal(err)
		}
		commit := r != 5 // round 5 is aborted
		if err := cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
			t.Fatal(err)
		}
		for _, pr := range results {
			written[pr.Record.Offset] = producedRec{key: string(pr.Record.Key), value: pr.Record.Value, committed: commit}
		}
		if compact == nil {
			// segment.ms=100: the next round's first append rolls a segment
			time.Sleep(150 * time.Millisecond)
		}
	}
	committed := 0
	latest := map[string]int64{} // key -> offset of its latest committed record
	for o, w := range written {
		if w.committed {
			committed++
			if o > latest[w.key] {
				latest[w.key] = o
			}
		}
	}

	f := startFetcher(t, brokers, Config{MaxWait: 200 * time.Millisecond, PartitionMaxBytes: 2 << 10})
	// where reading starts: kfake moves the log start up to the first batch
	// it keeps; Kafka keeps it
	logStart := func() int64 {
		res, err := admin.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: {kafka.FirstOffsetOf(0)}}})
		if err != nil || res.Topics[topic][0].Error != nil {
			t.Fatalf("list offsets: %v %v", err, res)
		}
		return res.Topics[topic][0].FirstOffset
	}
	readAll := func() fetched {
		p, err := f.Add(topic, 0, logStart())
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		return drainWhile(t, p, time.Minute, func(st PartitionState) bool { return !atLogEnd(st) })
	}
	if compact != nil {
		compact()
	}
	var got fetched
	testenv.Eventually(t, 3*time.Minute, func() bool {
		got = readAll()
		return len(got.values) < committed-1 // the cleaner removed superseded records
	}, "the log cleaner removed nothing (%d of %d committed records read)", len(got.values), committed)
	// The cleaner may still be at work: read once more, and check that
	// read whatever state it is in.
	got = readAll()
	gaps := 0
	for i, o := range got.offsets {
		w, ok := written[o]
		if !ok || !w.committed {
			t.Fatalf("offset %d delivered: written %v, committed %v", o, ok, w.committed)
		}
		if w.value == nil && got.values[i] != "" || w.value != nil && got.values[i] != string(w.value) {
			t.Fatalf("offset %d: want %q, got %q", o, w.value, got.values[i])
		}
		if i > 0 && o != got.offsets[i-1]+1 {
			gaps++
		}
	}
	have := map[int64]bool{}
	for _, o := range got.offsets {
		have[o] = true
	}
	for key, o := range latest {
		if !have[o] && written[o].value != nil {
			t.Errorf("key %s: its latest value (offset %d) was not delivered", key, o)
		}
	}
	end := testenv.LogEnd(t, brokers, topic, 1)[0]
	p, _ := f.Add(topic, 0, logStart())
	drainWhile(t, p, time.Minute, func(st PartitionState) bool { return !atLogEnd(st) })
	if st := p.State(); st.Position != end {
		t.Fatalf("position %d, log end %d", st.Position, end)
	}
	rate := tailRates(t, time.Second, p)[0]
	s := f.Stats()
	t.Logf("%s: %d records written (%d committed), %d delivered with %d gaps up to the log end %d; %d aborted records and %d markers skipped, %d empty answers; %.1f fetches/s at the tail (MaxWait 200ms)",
		map[bool]string{true: "own real Kafka broker", false: "kfake"}[compact == nil], len(written), committed, len(got.offsets), gaps, end,
		s.AbortedRecords, s.ControlBatches, s.EmptyAnswers, rate)
	if rate > 2*5+1 {
		t.Errorf("%.1f fetches/s at the tail of a compacted partition: spinning", rate)
	}
	if gaps == 0 {
		t.Errorf("no offset gaps: compaction did not happen, the test tests nothing")
	}
}

// startOwnBroker starts a Kafka broker of the test's own on ports of this
// package's range (32000-32999: the machine is shared, and a port found free
// at random can be taken before the JVM binds it).
func startOwnBroker(t *testing.T) *testenv.KafkaBroker {
	t.Helper()
	free := func(port int) bool {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			return false
		}
		l.Close()
		return true
	}
	for port := 32100; port < 32990; port += 2 {
		if free(port) && free(port+1) {
			k := &testenv.KafkaBroker{Port: port, Dir: t.TempDir()}
			k.Start(t)
			t.Cleanup(func() { k.Stop(t) })
			return k
		}
	}
	t.Fatal("no free port pair in 32100-32989")
	return nil
}
