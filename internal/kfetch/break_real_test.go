package kfetch

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// rec is a record as a consumer sees it, for comparisons.
type cmpRec struct {
	offset  int64
	key     []byte
	value   []byte
	headers []wire.Header
	ts      int64
}

func (r cmpRec) String() string {
	return fmt.Sprintf("@%d key=%s value=%s ts=%d headers=%s", r.offset, showBytes(r.key), showBytes(r.value), r.ts, showHeaders(r.headers))
}

func showBytes(b []byte) string {
	if b == nil {
		return "<nil>"
	}
	if len(b) > 24 {
		return fmt.Sprintf("%q...(%d)", b[:24], len(b))
	}
	return fmt.Sprintf("%q", b)
}

func showHeaders(hs []wire.Header) string {
	s := "["
	for _, h := range hs {
		s += h.Key + "=" + showBytes(h.Value) + " "
	}
	return s + "]"
}

func equalRec(a, b cmpRec) bool {
	if a.offset != b.offset || a.ts != b.ts || (a.key == nil) != (b.key == nil) || (a.value == nil) != (b.value == nil) ||
		!bytes.Equal(a.key, b.key) || !bytes.Equal(a.value, b.value) || len(a.headers) != len(b.headers) {
		return false
	}
	for i := range a.headers {
		if a.headers[i].Key != b.headers[i].Key || (a.headers[i].Value == nil) != (b.headers[i].Value == nil) ||
			!bytes.Equal(a.headers[i].Value, b.headers[i].Value) {
			return false
		}
	}
	return true
}

// kgoRead reads partition part of topic from 0 to its end with franz-go's
// consumer at the isolation level given: the reference.
func kgoRead(t *testing.T, brokers []string, topic string, part int32, committed bool) []cmpRec {
	t.Helper()
	iso := kgo.ReadUncommitted()
	if committed {
		iso = kgo.ReadCommitted()
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.FetchIsolationLevel(iso),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {part: kgo.NewOffset().At(0)}}))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []cmpRec
	empty := 0
	for empty < 3 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		n := 0
		fs.EachRecord(func(r *kgo.Record) {
			n++
			var hs []wire.Header
			for _, h := range r.Headers {
				hs = append(hs, wire.Header{Key: h.Key, Value: bytes.Clone(h.Value)})
			}
			out = append(out, cmpRec{offset: r.Offset, key: bytes.Clone(r.Key), value: bytes.Clone(r.Value), headers: hs, ts: r.Timestamp.UnixMilli()})
		})
		if n == 0 {
			empty++
		} else {
			empty = 0
		}
	}
	return out
}

// kfetchRead reads p from its position to the log end.
func kfetchRead(t *testing.T, p *Partition, within time.Duration) ([]cmpRec, int64) {
	t.Helper()
	deadline := time.Now().Add(within)
	var out []cmpRec
	pos := p.State().Position
	idle := 0
	for idle < 3 || !atLogEnd(p.State()) {
		if time.Now().After(deadline) {
			t.Fatalf("%s/%d: not at the log end after %v: %+v", p.topic, p.partition, within, p.State())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		r, err := p.Next(ctx)
		cancel()
		if err != nil {
			idle++
			continue
		}
		idle = 0
		if r.Err != nil {
			t.Fatalf("%s/%d: %v", p.topic, p.partition, r.Err)
		}
		if r.Offset != pos {
			t.Fatalf("%s/%d: result at %d, position was %d", p.topic, p.partition, r.Offset, pos)
		}
		for {
			recs, err := r.Read(3)
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if len(recs) == 0 {
				break
			}
			for _, rec := range recs {
				var hs []wire.Header
				for _, h := range rec.Headers {
					hs = append(hs, wire.Header{Key: h.Key, Value: bytes.Clone(h.Value)})
				}
				out = append(out, cmpRec{offset: rec.Offset, key: bytes.Clone(rec.Key), value: bytes.Clone(rec.Value), headers: hs, ts: rec.Time.UnixMilli()})
			}
		}
		pos = r.Next
		r.Release()
	}
	return out, pos
}

func diffRecs(t *testing.T, what string, want, got []cmpRec) {
	t.Helper()
	n := max(len(want), len(got))
	bad := 0
	for i := range n {
		var w, g cmpRec
		if i < len(want) {
			w = want[i]
		}
		if i < len(got) {
			g = got[i]
		}
		if i >= len(want) || i >= len(got) || !equalRec(w, g) {
			if bad < 5 {
				t.Errorf("%s: record %d:\n  kgo    %v\n  kfetch %v", what, i, w, g)
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d records differ (kgo %d, kfetch %d)", what, bad, n, len(want), len(got))
	}
}

// TestBreakDifferential writes, with real transactional producers of every
// codec, interleaved committed and aborted transactions, plain idempotent
// and plain records, null and empty keys and values, headers with null
// values, into topics with CreateTime and LogAppendTime; then reads each
// partition with franz-go's consumer (the reference) and with kfetch, with
// byte limits small enough that responses end in partial batches and abort
// markers come in later responses than their batches, from offset 0 and
// from offsets in the middle of batches; read_committed and
// read_uncommitted. Everything must match, record by record.
func TestBreakDifferential(t *testing.T) {
	testenv.RequireReal(t, "differential test against a real broker")
	brokers := testenv.Kafka(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	admin := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 30 * time.Second}
	base := testenv.Name(t)
	topics := []string{base + "-ct", base + "-lat"}
	for i, topic := range topics {
		cfg := []kafka.ConfigEntry{}
		if i == 1 {
			cfg = append(cfg, kafka.ConfigEntry{ConfigName: "message.timestamp.type", ConfigValue: "LogAppendTime"})
		}
		res, err := admin.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
			Topic: topic, NumPartitions: 2, ReplicationFactor: 1, ConfigEntries: cfg}}})
		if err == nil {
			err = res.Errors[topic]
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	codecs := []kgo.CompressionCodec{kgo.GzipCompression(), kgo.SnappyCompression(), kgo.Lz4Compression(), kgo.ZstdCompression(), kgo.NoCompression()}
	rng := rand.New(rand.NewSource(1))
	start := time.Now().Truncate(time.Millisecond) // old timestamps: retention deletes segments mid-test
	mkrec := func(topic string, part int32, i int) *kgo.Record {
		r := &kgo.Record{Topic: topic, Partition: part, Timestamp: start.Add(time.Duration(i) * time.Millisecond)}
		switch i % 5 {
		case 0: // null key, value
			r.Value = fmt.Appendf(nil, "v%d", i)
		case 1: // empty key, tombstone
			r.Key = []byte{}
		case 2: // empty value, headers with null and empty values, repeated
			r.Key = fmt.Appendf(nil, "k%d", i)
			r.Value = []byte{}
			r.Headers = []kgo.RecordHeader{{Key: "h", Value: nil}, {Key: "h", Value: []byte{}}, {Key: "x", Value: []byte("y")}}
		default:
			r.Key = fmt.Appendf(nil, "k%d", i)
			r.Value = bytes.Repeat([]byte{byte('a' + i%26)}, 10+rng.Intn(300))
		}
		return r
	}
	var txs []*kgo.Client
	for i, c := range codecs {
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
			kgo.TransactionalID(fmt.Sprintf("%s-tx%d", base, i)), kgo.ProducerBatchCompression(c),
			kgo.ProducerLinger(0), kgo.ProducerBatchMaxBytes(2<<10))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		txs = append(txs, cl)
	}
	plain, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerBatchCompression(kgo.Lz4Compression()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	nonIdem, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.DisableIdempotentWrite(), kgo.RequiredAcks(kgo.LeaderAck()))
	if err != nil {
		t.Fatal(err)
	}
	defer nonIdem.Close()

	i := 0
	for round := range 12 {
		// two or three producers with transactions open at once, written in
		// turn, then each committed or aborted
		open := []int{round % len(txs), (round + 2) % len(txs)}
		if round%3 == 0 {
			open = append(open, (round+4)%len(txs))
		}
		for _, k := range open {
			if err := txs[k].BeginTransaction(); err != nil {
				t.Fatal(err)
			}
		}
		for step := range 3 {
			for _, k := range open {
				var rs []*kgo.Record
				for _, topic := range topics {
					for part := range int32(2) {
						for range 2 + rng.Intn(6) {
							rs = append(rs, mkrec(topic, part, i))
							i++
						}
					}
				}
				if err := txs[k].ProduceSync(ctx, rs...).FirstErr(); err != nil {
					t.Fatal(err)
				}
			}
			if step == 1 {
				var rs []*kgo.Record
				for _, topic := range topics {
					for part := range int32(2) {
						rs = append(rs, mkrec(topic, part, i), mkrec(topic, part, i+1))
						i += 2
					}
				}
				cl := plain
				if round%2 == 1 {
					cl = nonIdem
				}
				if err := cl.ProduceSync(ctx, rs...).FirstErr(); err != nil {
					t.Fatal(err)
				}
			}
		}
		for j, k := range open {
			commit := (round+j)%3 != 0
			if err := txs[k].EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("%d records written", i)

	for _, committed := range []bool{true, false} {
		iso := ReadUncommitted
		if committed {
			iso = ReadCommitted
		}
		// small limits: responses end in partial batches; markers come in
		// later responses than the batches they end
		f := startFetcher(t, brokers, Config{Isolation: iso, MaxWait: 100 * time.Millisecond,
			PartitionMaxBytes: 700, MaxBytes: 1000, MemoryBytes: 1 << 20})
		for _, topic := range topics {
			for part := range int32(2) {
				want := kgoRead(t, brokers, topic, part, committed)
				what := fmt.Sprintf("%s/%d %s", topic, part, iso)
				// all four at once would share requests; here one at a time
				p, err := f.Add(topic, int(part), 0)
				if err != nil {
					t.Fatal(err)
				}
				got, end := kfetchRead(t, p, time.Minute)
				p.Close()
				diffRecs(t, what+" from 0", want, got)
				// from offsets inside batches, markers, aborted ranges
				for _, from := range []int64{1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, end / 2, end - 3, end - 1} {
					if from <= 0 || from >= end {
						continue
					}
					p, err := f.Add(topic, int(part), from)
					if err != nil {
						t.Fatal(err)
					}
					got, _ := kfetchRead(t, p, time.Minute)
					p.Close()
					var suffix []cmpRec
					for _, r := range want {
						if r.offset >= from {
							suffix = append(suffix, r)
						}
					}
					diffRecs(t, fmt.Sprintf("%s from %d", what, from), suffix, got)
				}
				t.Logf("%s: %d records, log end %d", what, len(want), end)
			}
		}
		// and all partitions of both topics in one fetcher at once, so
		// requests hold several partitions and the byte limit runs out
		// mid-request
		var ps []*Partition
		var wants [][]cmpRec
		for _, topic := range topics {
			for part := range int32(2) {
				p, err := f.Add(topic, int(part), 0)
				if err != nil {
					t.Fatal(err)
				}
				ps = append(ps, p)
				wants = append(wants, kgoRead(t, brokers, topic, part, committed))
			}
		}
		type res struct {
			got []cmpRec
		}
		results := make([]res, len(ps))
		done := make(chan int)
		for k, p := range ps {
			go func() {
				defer func() { done <- k }()
				g, _ := kfetchRead(t, p, time.Minute)
				results[k].got = g
			}()
		}
		for range ps {
			<-done
		}
		for k := range ps {
			diffRecs(t, fmt.Sprintf("concurrent %s/%d %s", ps[k].topic, ps[k].partition, iso), wants[k], results[k].got)
		}
		s := f.Stats()
		t.Logf("%s: %+v", iso, s)
	}
	_ = slices.Equal[[]int]
}

// TestBreakTieredStorage needs a broker with tiered storage: start it with
//
//	EXTRA='remote.fetch.max.wait.ms=1' internal/kfetch/testdata/tiered-broker.sh start /tmp/tiered
//	KFETCH_TIERED_BROKER=127.0.0.1:32500 KFETCH_TIERED_DIR=/tmp/tiered go test -run TestBreakTieredStorage -v ./internal/kfetch/
//
// It writes ~3.5 MiB of plain records to a topic with remote storage, waits
// until the first segments exist only in the remote tier, and reads the
// partition from offset 0 with kfetch: every offset 0..end-1 must be
// delivered. When the remote read does not finish within
// remote.fetch.max.wait.ms (default 500 ms; 1 ms here to make it certain),
// the broker answers the partition with no records and no error
// (DelayedRemoteFetch.onComplete), and kfetch's empty-range rule moves Next
// to the high watermark / last stable offset.
func TestBreakTieredStorage(t *testing.T) {
	addr := os.Getenv("KFETCH_TIERED_BROKER")
	dir := os.Getenv("KFETCH_TIERED_DIR")
	if addr == "" || dir == "" {
		t.Skip("KFETCH_TIERED_BROKER / KFETCH_TIERED_DIR not set (see testdata/tiered-broker.sh)")
	}
	brokers := []string{addr}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	topic := testenv.Name(t)
	admin := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 30 * time.Second}
	res, err := admin.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: 1, ReplicationFactor: 1,
		ConfigEntries: []kafka.ConfigEntry{
			{ConfigName: "remote.storage.enable", ConfigValue: "true"},
			{ConfigName: "local.retention.ms", ConfigValue: "1000"},
			{ConfigName: "retention.ms", ConfigValue: "-1"},
			{ConfigName: "segment.bytes", ConfigValue: "1048576"},
		},
	}}})
	if err == nil {
		err = res.Errors[topic]
	}
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic), kgo.ProducerBatchCompression(kgo.NoCompression()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const n = 350
	for i := range n {
		cl.Produce(ctx, &kgo.Record{Key: fmt.Appendf(nil, "k%d", i), Value: bytes.Repeat([]byte{'x'}, 10<<10)}, nil)
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// wait until the local log no longer starts at 0: the first segments
	// are only in the remote tier
	localStart := func() int64 {
		ents, _ := os.ReadDir(filepath.Join(dir, "data", topic+"-0"))
		low := int64(-1)
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".log") {
				o, err := strconv.ParseInt(strings.TrimSuffix(e.Name(), ".log"), 10, 64)
				if err == nil && (low < 0 || o < low) {
					low = o
				}
			}
		}
		return low
	}
	testenv.Eventually(t, 3*time.Minute, func() bool { return localStart() > 0 }, "no segment moved to the remote tier")
	t.Logf("local log starts at %d; the records below it are only in the remote tier", localStart())

	f := startFetcher(t, brokers, Config{MaxWait: 200 * time.Millisecond})
	p, err := f.Add(topic, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, end := kfetchRead(t, p, 2*time.Minute)
	t.Logf("kfetch: %d records delivered, position %d, %+v", len(got), end, f.Stats())
	for i, r := range got {
		if r.offset != int64(i) {
			t.Fatalf("record %d has offset %d: offsets [%d, %d) were skipped (Next jumped over the remote tier)", i, r.offset, i, r.offset)
		}
	}
	if len(got) != n {
		t.Fatalf("want %d records, got %d", n, len(got))
	}
}
