package kfetch

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// readAll reads all of r in chunks of 7 (odd, to cross batch boundaries),
// copying the records, which are valid only until the next Read.
func readAll(t testing.TB, r *Result) []wire.Record {
	t.Helper()
	var out []wire.Record
	for {
		recs, err := r.Read(7)
		out = append(out, copyRecords(recs)...)
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if len(recs) == 0 {
			return out
		}
	}
}

// produceSized writes records k<i> → v<i> padded to size bytes, record i to
// partition i % parts, with kgo: it retries the NOT_LEADER answers a broker
// gives for a while after creating a topic of many partitions (which
// testenv.ProduceSized does not).
func produceSized(t *testing.T, brokers []string, topic string, parts, n, size int, compressed bool) {
	t.Helper()
	codec := kgo.NoCompression()
	if compressed {
		codec = kgo.SnappyCompression()
	}
	// batches of at most 16 KiB: below the tests' partition limits, so no
	// fetch carries a first batch larger than its limit (Kafka returns one
	// whole, beyond the budget)
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ProducerLinger(5*time.Millisecond),
		kgo.ProducerBatchCompression(codec), kgo.ProducerBatchMaxBytes(16<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rs := make([]*kgo.Record, 0, n)
	for i := range n {
		v := []byte("v" + strconv.Itoa(i))
		if len(v) < size {
			v = append(v, make([]byte, size-len(v))...)
		}
		rs = append(rs, &kgo.Record{Partition: int32(i % parts), Key: []byte("k" + strconv.Itoa(i)), Value: v})
	}
	if err := cl.ProduceSync(ctx, rs...).FirstErr(); err != nil {
		t.Fatalf("produce to %s: %v", topic, err)
	}
}

// startFetcher runs a Fetcher on brokers until the test ends.
func startFetcher(t *testing.T, brokers []string, cfg Config) *Fetcher {
	t.Helper()
	cfg.Client = &kafka.Client{Addr: kafka.TCP(brokers...)}
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return 30s after its context ended")
		}
	})
	return f
}

// fetched is what drain collected from one partition.
type fetched struct {
	offsets []int64
	keys    []string
	values  []string
	results int
	next    int64
}

// drain takes results until the position reaches end, copying the records.
func drain(t *testing.T, p *Partition, end int64, within time.Duration) fetched {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	var out fetched
	out.next = p.State().Position
	for out.next < end {
		r, err := p.Next(ctx)
		if err != nil {
			st := p.State()
			t.Fatalf("%s/%d: position %d, want %d: %v (state %+v)", p.topic, p.partition, out.next, end, err, st)
		}
		if r.Err != nil {
			t.Fatalf("%s/%d: %v", p.topic, p.partition, r.Err)
		}
		if r.Offset != out.next {
			t.Fatalf("%s/%d: result starts at %d, want %d", p.topic, p.partition, r.Offset, out.next)
		}
		last := r.Offset - 1
		for _, rec := range readAll(t, r) {
			if rec.Offset <= last || rec.Offset >= r.Next {
				t.Fatalf("%s/%d: record at %d out of order or outside [%d, %d)", p.topic, p.partition, rec.Offset, r.Offset, r.Next)
			}
			last = rec.Offset
			out.offsets = append(out.offsets, rec.Offset)
			out.keys = append(out.keys, string(rec.Key))
			out.values = append(out.values, string(rec.Value))
		}
		out.results++
		out.next = r.Next
		r.Release()
	}
	if out.next != end {
		t.Fatalf("%s/%d: position %d passed the end %d", p.topic, p.partition, out.next, end)
	}
	return out
}

// checkProduced checks records written by testenv.Produce: key k<i> with
// value v<i>, no index twice.
func checkProduced(t *testing.T, seen map[int]bool, got fetched) {
	t.Helper()
	for i := range got.keys {
		k, v := got.keys[i], got.values[i]
		n, err := strconv.Atoi(strings.TrimPrefix(k, "k"))
		if err != nil || !strings.HasPrefix(v, "v"+strconv.Itoa(n)) {
			t.Fatalf("offset %d: key %q value %.20q", got.offsets[i], k, v)
		}
		if seen[n] {
			t.Fatalf("record %d delivered twice", n)
		}
		seen[n] = true
	}
}

func TestFetchPlain(t *testing.T) {
	brokers := testenv.Kafka(t)
	topic := testenv.Name(t)
	const parts, n = 4, 4000
	testenv.CreateTopic(t, brokers, topic, parts)
	testenv.Produce(t, brokers, topic, 0, n)
	end := testenv.LogEnd(t, brokers, topic, parts)

	// a small partition limit: many fetches, several partitions per request
	f := startFetcher(t, brokers, Config{PartitionMaxBytes: 4 << 10, MaxBytes: 16 << 10})
	var wg sync.WaitGroup
	results := make([]fetched, parts)
	for i := range parts {
		p, err := f.Add(topic, i, 0)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = drain(t, p, end[i], 60*time.Second)
		}()
	}
	wg.Wait()
	seen := map[int]bool{}
	for i, r := range results {
		for j, o := range r.offsets {
			if o != int64(j) {
				t.Fatalf("partition %d: record %d at offset %d: a plain topic has no gaps", i, j, o)
			}
		}
		checkProduced(t, seen, r)
	}
	if len(seen) != n {
		t.Fatalf("want %d records, got %d", n, len(seen))
	}
	s := f.Stats()
	t.Logf("%s: %d records, %d requests carrying %d partition fetches (%.2f per request), %d bytes, peak memory %d",
		testenv.String(), s.Records, s.Requests, s.PartitionFetches, float64(s.PartitionFetches)/float64(s.Requests), s.Bytes, s.MemoryPeak)
	if s.Records != n {
		t.Errorf("Stats.Records: want %d, got %d", n, s.Records)
	}
	if s.PartitionFetches <= s.Requests {
		t.Errorf("want multi-partition requests: %d partition fetches in %d requests", s.PartitionFetches, s.Requests)
	}
}

func TestFetchOutOfRange(t *testing.T) {
	brokers := testenv.Kafka(t)
	topic := testenv.Name(t)
	testenv.CreateTopic(t, brokers, topic, 1)
	testenv.Produce(t, brokers, topic, 0, 10)
	end := testenv.LogEnd(t, brokers, topic, 1)[0]
	f := startFetcher(t, brokers, Config{})
	p, err := f.Add(topic, 0, end+1000)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := p.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var pe *PartitionError
	if !errors.Is(r.Err, kafka.OffsetOutOfRange) || !errors.As(r.Err, &pe) || r.Next != end+1000 || r.Len() != 0 {
		t.Fatalf("want OFFSET_OUT_OF_RANGE at %d with no records, got %v next %d, %d records", end+1000, r.Err, r.Next, r.Len())
	}
	t.Logf("%v", r.Err)
	r.Release()
	// the partition stays stopped until SetOffset
	fetches := p.State().Fetches
	p.SetOffset(0)
	got := drain(t, p, end, 30*time.Second)
	checkProduced(t, map[int]bool{}, got)
	if len(got.offsets) != 10 || p.State().Fetches <= fetches {
		t.Fatalf("after SetOffset(0): want 10 records, got %d", len(got.offsets))
	}
}

func TestFetchPauseAndSetOffset(t *testing.T) {
	brokers := testenv.Kafka(t)
	topic := testenv.Name(t)
	testenv.CreateTopic(t, brokers, topic, 2)
	for i := range 20 { // many small batches: one per fetch of 1 KiB
		testenv.Produce(t, brokers, topic, 20*i, 20)
	}
	end := testenv.LogEnd(t, brokers, topic, 2)
	f := startFetcher(t, brokers, Config{PartitionMaxBytes: 1 << 10})
	p0, _ := f.Add(topic, 0, 0)
	p1, _ := f.Add(topic, 1, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// p0 has a result buffered ahead; Pause drops it and its memory
	r, err := p0.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := r.Next
	r.Release()
	testenv.Eventually(t, 30*time.Second, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return p0.buffered != nil
	}, "no result fetched ahead")
	held := f.Stats().MemoryHeld
	p0.Pause()
	paused := p0.State()
	f.mu.Lock()
	dropped := p0.buffered == nil
	f.mu.Unlock()
	if after := f.Stats().MemoryHeld; !dropped || after >= held {
		t.Errorf("Pause kept the result fetched ahead: held %d bytes before, %d after", held, after)
	}
	// while p1 is drained to its end (many requests), p0 is fetched no more
	drain(t, p1, end[1], 60*time.Second)
	if st := p0.State(); st.Fetches > paused.Fetches+1 || st.Position != first {
		t.Fatalf("paused partition: fetched %d times since Pause, position %d (want %d)", st.Fetches-paused.Fetches, st.Position, first)
	}
	p0.Resume()
	rest := drain(t, p0, end[0], 60*time.Second)
	if len(rest.offsets) == 0 || rest.offsets[0] != first {
		t.Fatalf("after Resume: want records from %d, got %v...", first, rest.offsets[:min(3, len(rest.offsets))])
	}
	// SetOffset rewinds
	p0.SetOffset(0)
	again := drain(t, p0, end[0], 60*time.Second)
	if int64(len(again.offsets)) != end[0] {
		t.Fatalf("after SetOffset(0): want %d records, got %d", end[0], len(again.offsets))
	}
	// Close ends Next
	p0.Close()
	if _, err := p0.Next(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close: want ErrClosed, got %v", err)
	}
	if _, err := f.Add(topic, 0, 0); err != nil {
		t.Fatalf("Add after Close: %v", err)
	}
}

// TestFetchMemoryBudget fetches many partitions with backlogs through a budget
// far below what they would take at once, with callers that hold each result
// a while (as an append to Redis does): memory stays within the budget (plus
// at most one batch per request), every partition is drained, and the budget
// did bind.
func TestFetchMemoryBudget(t *testing.T) {
	cases := []struct {
		name                                string
		parts, n, size                      int
		budget, maxBytes, partitionMaxBytes int
		compressed                          bool
	}{
		{"24 partitions", 24, 24000, 100, 256 << 10, 64 << 10, 32 << 10, false},
		// 1,000 partitions with the default 1 MiB per partition would
		// hold 1 GiB if each fetched on its own
		{"1000 partitions", 1000, 50000, 100, 4 << 20, 1 << 20, 1 << 20, false},
		// snappy batches of records that compress about 20 times: the
		// fetcher learns what a fetched byte costs once decoded
		{"24 partitions compressed", 24, 48000, 100, 512 << 10, 64 << 10, 32 << 10, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.parts > 100 && testing.Short() {
				t.Skip("-short")
			}
			testMemoryBudget(t, c.parts, c.n, c.size, int64(c.budget), int32(c.maxBytes), int32(c.partitionMaxBytes), c.compressed)
		})
	}
}

func testMemoryBudget(t *testing.T, parts, n, size int, budget int64, maxBytes, partitionMaxBytes int32, compressed bool) {
	brokers := testenv.Kafka(t)
	topic := testenv.Name(t)
	testenv.CreateTopic(t, brokers, topic, parts)
	produceSized(t, brokers, topic, parts, n, size, compressed)
	end := testenv.LogEnd(t, brokers, topic, parts)

	f := startFetcher(t, brokers, Config{MemoryBytes: budget, MaxBytes: maxBytes, PartitionMaxBytes: partitionMaxBytes})
	// the first results of a compressed topic are fetched before its
	// ratio is known: the bound holds once it is learned
	var coldPeak int64
	warm := make(chan struct{})
	var taken sync.WaitGroup
	taken.Add(parts)
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[int]bool{}
	var maxBatch int64
	var maxDecoded atomic.Int64
	for i := range parts {
		p, err := f.Add(topic, i, 0)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Second)
			defer cancel()
			pos := int64(0)
			var got fetched
			first := true
			for pos < end[i] {
				r, err := p.Next(ctx)
				if err != nil || r.Err != nil {
					t.Errorf("partition %d at %d: %v %v", i, pos, err, r)
					return
				}
				// read in chunks of 100 as the ingest appends; the
				// chunks are valid until the next Read
				for {
					recs, err := r.Read(100)
					if err != nil {
						t.Errorf("partition %d: %v", i, err)
						return
					}
					if len(recs) == 0 {
						break
					}
					for _, rec := range recs {
						got.offsets = append(got.offsets, rec.Offset)
						got.keys = append(got.keys, string(rec.Key))
						got.values = append(got.values, string(rec.Value))
					}
				}
				mu.Lock()
				maxBatch = max(maxBatch, int64(r.Bytes))
				mu.Unlock()
				if d := r.charged - r.spare - int64(cap(r.set)); d > maxDecoded.Load() {
					maxDecoded.Store(d)
				}
				pos = r.Next
				// hold the result while "appending": the partitions
				// compete for the budget meanwhile
				time.Sleep(time.Millisecond)
				r.Release()
				if first {
					first = false
					taken.Done()
				}
			}
			if first {
				taken.Done()
			}
			mu.Lock()
			checkProduced(t, seen, got)
			mu.Unlock()
		}()
	}
	go func() {
		// every partition has had a result: from here on the ratio is
		// known; measure the peak from now
		taken.Wait()
		f.mu.Lock()
		coldPeak = f.stats.MemoryPeak
		f.stats.MemoryPeak = f.used + f.reserved
		f.mu.Unlock()
		close(warm)
	}()
	wg.Wait()
	<-warm
	if len(seen) != n {
		t.Fatalf("want %d records, got %d", n, len(seen))
	}
	s := f.Stats()
	if compressed {
		t.Logf("compressed: peak %d before the ratio was learned (budget %d)", coldPeak, budget)
	}
	t.Logf("%s: %d partitions, %d records of %d B: budget %d, peak %d (largest record set %d), %d requests, %d budget waits, expansion %.2f",
		testenv.String(), parts, n, size, budget, s.MemoryPeak, maxBatch, s.Requests, s.BudgetWaits, s.Expansion)
	slack := maxBatch // the broker returns a first batch whatever its size
	if compressed {
		slack = maxDecoded.Load() // and one batch decompressed
	}
	if s.MemoryPeak > budget+slack {
		t.Errorf("memory peak %d above the budget %d plus %d", s.MemoryPeak, budget, slack)
	}
	if s.BudgetWaits == 0 {
		t.Errorf("the budget never held a fetch back: the test does not test it")
	}
	if s.MemoryHeld != 0 {
		t.Errorf("all results released, yet %d bytes are still counted", s.MemoryHeld)
	}
}

// TestFetchIdleCost: partitions at their log end cost one long poll per
// MaxWait per broker, not a request per partition.
func TestFetchIdleCost(t *testing.T) {
	brokers := testenv.Kafka(t)
	topic := testenv.Name(t)
	const parts = 50
	testenv.CreateTopic(t, brokers, topic, parts)
	f := startFetcher(t, brokers, Config{MaxWait: 200 * time.Millisecond})
	for i := range parts {
		if _, err := f.Add(topic, i, 0); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return f.Stats().Requests >= 3 }, "no requests")
	s0, t0 := f.Stats(), time.Now()
	testenv.Eventually(t, 30*time.Second, func() bool { return time.Since(t0) >= 2*time.Second }, "")
	s1, el := f.Stats(), time.Since(t0).Seconds()
	reqs := float64(s1.Requests-s0.Requests) / el
	t.Logf("%s: %d idle partitions: %.1f requests/s carrying %.1f partition fetches/s (MaxWait 200ms)",
		testenv.String(), parts, reqs, float64(s1.PartitionFetches-s0.PartitionFetches)/el)
	if reqs > 2*(1/0.2)+1 {
		t.Errorf("%.1f requests/s for idle partitions: want about one per MaxWait", reqs)
	}
}

func TestConfigValidate(t *testing.T) {
	cl := &kafka.Client{Addr: kafka.TCP("127.0.0.1:9")}
	cases := []struct {
		name string
		cfg  Config
		want []string
	}{
		{"defaults", Config{Client: cl}, nil},
		{"no client", Config{}, []string{"Client"}},
		{"all wrong", Config{Client: cl, MemoryBytes: 1 << 20, PartitionMaxBytes: 2 << 20, MaxBytes: 4 << 20, MaxInFlight: -1, Isolation: 5},
			[]string{"partition max bytes 2097152 must not exceed the memory budget 1048576", "request max bytes 4194304", "max in flight -1", "isolation level 5"}},
		// the batch limit is a zip-bomb guard, not a part of the budget
		{"batch above budget", Config{Client: cl, MemoryBytes: 1 << 20, BatchMaxBytes: 100 << 20}, nil},
		{"batch limit 2 GiB", Config{Client: cl, BatchMaxBytes: 2 << 30}, []string{"batch max bytes 2147483648"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.cfg.Validate()
			if (err == nil) != (c.want == nil) {
				t.Fatalf("want problems %v, got %v", c.want, err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("want %q in %v", w, err)
				}
			}
		})
	}
	if l, err := ParseIsolationLevel("read_uncommitted"); err != nil || l != ReadUncommitted || l.String() != "read_uncommitted" {
		t.Errorf("ParseIsolationLevel: %v %v", l, err)
	}
	if _, err := ParseIsolationLevel("committed"); err == nil {
		t.Errorf("ParseIsolationLevel accepted a bad level")
	}
	for _, c := range []struct{ mem, want int64 }{{1 << 20, 64 << 20}, {64 << 20, 64 << 20}, {256 << 20, 256 << 20}, {4 << 30, math.MaxInt32}} {
		if got := (Config{MemoryBytes: c.mem}).withDefaults().BatchMaxBytes; got != c.want {
			t.Errorf("default BatchMaxBytes with a %d-byte budget: %d, want %d (max(budget, 64 MiB), below 2 GiB)", c.mem, got, c.want)
		}
	}
	if ReadCommitted != IsolationLevel(0) {
		t.Errorf("read_committed must be the zero value (the default)")
	}
	_ = fmt.Sprint
}

// TestFetchSASL fetches through a kafka.Transport that authenticates with
// SASL (on kfake): the raw fetch exchange happens on kafka-go's connection
// after its handshake, and wrong credentials are retried, never delivered
// as records.
func TestFetchSASL(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(), kfake.Superuser("PLAIN", "bridge", "s3cret"),
		kfake.SeedTopics(1, "secured"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addr := kafka.TCP(c.ListenAddrs()...)
	tr := &kafka.Transport{SASL: plain.Mechanism{Username: "bridge", Password: "s3cret"}}
	w := &kafka.Writer{Addr: addr, Topic: "secured", Transport: tr, BatchTimeout: time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, kafka.Message{Key: []byte("k0"), Value: []byte("v0")}, kafka.Message{Key: []byte("k1"), Value: []byte("v1")}); err != nil {
		t.Fatal(err)
	}
	w.Close()

	f, err := New(Config{Client: &kafka.Client{Addr: addr, Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	go f.Run(runCtx)
	p, _ := f.Add("secured", 0, 0)
	got := drain(t, p, 2, 30*time.Second)
	if len(got.values) != 2 || got.values[0] != "v0" || got.values[1] != "v1" {
		t.Fatalf("through SASL: got %v", got.values)
	}

	bad := &kafka.Transport{SASL: plain.Mechanism{Username: "bridge", Password: "wrong"}}
	fb, err := New(Config{Client: &kafka.Client{Addr: addr, Transport: bad}})
	if err != nil {
		t.Fatal(err)
	}
	go fb.Run(runCtx)
	pb, _ := fb.Add("secured", 0, 0)
	// kafka-go reports kfake closing the connection as "unexpected EOF" (a
	// real broker answers SASL_AUTHENTICATION_FAILED): the partition's
	// state carries whatever the Transport said
	testenv.Eventually(t, 30*time.Second, func() bool { return pb.State().Err != nil && fb.Stats().MetadataErrors > 0 },
		"wrong credentials: no error in the partition's state")
	short, cancelShort := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelShort()
	if r, err := pb.Next(short); err == nil {
		t.Fatalf("wrong credentials delivered a result: %+v", r)
	}
	t.Logf("wrong credentials: %v; %d metadata requests, %d failed", pb.State().Err, fb.Stats().MetadataRequests, fb.Stats().MetadataErrors)
}
