package kfetch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kbridge/kbridge/internal/testenv"
)

// producer writes records to chosen partitions, in transactions or not.
type producer struct {
	t     *testing.T
	cl    *kgo.Client
	topic string
	// wrote is every value written, by partition, and whether it is to be
	// delivered in read_committed (committed or not transactional)
	wrote map[int32][]written
	open  []written // values of the open transaction
}

type written struct {
	value     string
	committed bool
}

func newProducer(t *testing.T, brokers []string, topic, txnID string) *producer {
	t.Helper()
	opts := []kgo.Opt{
		kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
	}
	if txnID != "" {
		opts = append(opts, kgo.TransactionalID(txnID), kgo.TransactionTimeout(3*time.Minute))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &producer{t: t, cl: cl, topic: topic, wrote: map[int32][]written{}}
}

func (p *producer) produce(ctx context.Context, prefix string, n int, parts ...int32) []written {
	p.t.Helper()
	var out []written
	var rs []*kgo.Record
	for _, part := range parts {
		for i := range n {
			v := fmt.Sprintf("%s-p%d-%d", prefix, part, i)
			rs = append(rs, &kgo.Record{Partition: part, Key: []byte(v), Value: []byte(v)})
			out = append(out, written{value: v})
		}
	}
	if err := p.cl.ProduceSync(ctx, rs...).FirstErr(); err != nil {
		p.t.Fatalf("produce %s: %v", prefix, err)
	}
	return out
}

// plain writes n records outside any transaction to each partition.
func (p *producer) plain(ctx context.Context, prefix string, n int, parts ...int32) {
	p.t.Helper()
	for i, w := range p.produce(ctx, prefix, n, parts...) {
		part := parts[i/n]
		w.committed = true
		p.wrote[part] = append(p.wrote[part], w)
	}
}

// txn writes a transaction of n records to each partition and ends it.
func (p *producer) txn(ctx context.Context, prefix string, commit bool, n int, parts ...int32) {
	p.t.Helper()
	p.begin(ctx, prefix, n, parts...)
	p.end(ctx, commit)
}

// begin writes the records of a transaction it leaves open.
func (p *producer) begin(ctx context.Context, prefix string, n int, parts ...int32) {
	p.t.Helper()
	if err := p.cl.BeginTransaction(); err != nil {
		p.t.Fatal(err)
	}
	ws := p.produce(ctx, prefix, n, parts...)
	for i := range ws {
		ws[i].value = fmt.Sprintf("%d|%s", parts[i/n], ws[i].value)
	}
	p.open = ws
}

func (p *producer) end(ctx context.Context, commit bool) {
	p.t.Helper()
	if err := p.cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
		p.t.Fatalf("end transaction: %v", err)
	}
	for _, w := range p.open {
		var part int32
		var v string
		fmt.Sscanf(w.value, "%d|%s", &part, &v)
		p.wrote[part] = append(p.wrote[part], written{value: v, committed: commit})
	}
	p.open = nil
}

// expect returns the values a consumer delivers from partition part.
func expect(ws []written, committedOnly bool) []string {
	var out []string
	for _, w := range ws {
		if w.committed || !committedOnly {
			out = append(out, w.value)
		}
	}
	return out
}

// drainWhile takes results while cond holds, copying the values; a Next that
// finds nothing for a second re-checks cond.
func drainWhile(t *testing.T, p *Partition, within time.Duration, cond func(PartitionState) bool) fetched {
	t.Helper()
	deadline := time.Now().Add(within)
	var out fetched
	for cond(p.State()) {
		if time.Now().After(deadline) {
			t.Fatalf("%s/%d: after %v: still %+v", p.topic, p.partition, within, p.State())
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := p.Next(ctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			continue
		}
		if err != nil || r.Err != nil {
			t.Fatalf("%s/%d: %v %v", p.topic, p.partition, err, r.Err)
		}
		for _, rec := range readAll(t, r) {
			out.offsets = append(out.offsets, rec.Offset)
			out.values = append(out.values, string(rec.Value))
		}
		out.results++
		out.next = r.Next
		r.Release()
	}
	return out
}

func atLogEnd(st PartitionState) bool {
	return st.HighWatermark >= 0 && st.Position >= st.HighWatermark
}

// tailRates measures fetches per second of each partition over a window.
func tailRates(t *testing.T, window time.Duration, ps ...*Partition) []float64 {
	t.Helper()
	before := make([]int64, len(ps))
	for i, p := range ps {
		before[i] = p.State().Fetches
	}
	t0 := time.Now()
	testenv.Eventually(t, window+10*time.Second, func() bool { return time.Since(t0) >= window }, "")
	el := time.Since(t0).Seconds()
	out := make([]float64, len(ps))
	for i, p := range ps {
		out[i] = float64(p.State().Fetches-before[i]) / el
	}
	return out
}

// TestFetchTransactions writes committed, aborted and open transactions
// interleaved with plain records across three partitions, with a real
// transactional producer, and checks that read_committed delivers exactly
// the committed and plain records, stops at the last stable offset while a
// transaction is open, reaches the log end once all are finished (markers
// included), and does not fetch a partition whose tail is a marker more
// often than a plain topic's; and that read_uncommitted delivers every data
// record.
func TestFetchTransactions(t *testing.T) {
	brokers := testenv.Kafka(t)
	topic, plainTopic := testenv.Name(t), testenv.Name(t)
	testenv.CreateTopic(t, brokers, topic, 3)
	testenv.CreateTopic(t, brokers, plainTopic, 1)
	testenv.Produce(t, brokers, plainTopic, 0, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	plain := newProducer(t, brokers, topic, "")
	a := newProducer(t, brokers, topic, topic+"-a")
	b := newProducer(t, brokers, topic, topic+"-b")
	plain.plain(ctx, "plain1", 5, 0, 1, 2)
	a.txn(ctx, "a1", true, 5, 0, 1, 2)
	b.begin(ctx, "b-open", 5, 1) // stays open: p1's last stable offset stops here
	a.txn(ctx, "a2", false, 5, 0, 1, 2)
	plain.plain(ctx, "plain2", 5, 0, 1, 2)
	a.txn(ctx, "a3", true, 5, 0, 1, 2)
	a.txn(ctx, "a4", false, 5, 0, 2) // p0 and p2 end with an abort marker

	const maxWait = 200 * time.Millisecond
	f := startFetcher(t, brokers, Config{MaxWait: maxWait})
	ps := make([]*Partition, 3)
	got := make([]fetched, 3)
	for i := range ps {
		var err error
		if ps[i], err = f.Add(topic, i, 0); err != nil {
			t.Fatal(err)
		}
	}
	pp, err := f.Add(plainTopic, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	drainWhile(t, pp, time.Minute, func(st PartitionState) bool { return !atLogEnd(st) })
	for _, i := range []int{0, 2} {
		got[i] = drainWhile(t, ps[i], time.Minute, func(st PartitionState) bool { return !atLogEnd(st) })
	}
	// p1 stops at the last stable offset, below the log end
	got[1] = drainWhile(t, ps[1], time.Minute, func(st PartitionState) bool {
		return st.LastStableOffset < 0 || st.Position < st.LastStableOffset
	})
	open := ps[1].State()
	if open.Position != open.LastStableOffset || open.LastStableOffset >= open.HighWatermark {
		t.Fatalf("p1 with an open transaction: position %d, last stable %d, high watermark %d", open.Position, open.LastStableOffset, open.HighWatermark)
	}
	if want := expect(a.wrote[1][:5], true); !slices.Equal(got[1].values, append(expect(plain.wrote[1][:5], true), want...)) {
		t.Fatalf("p1 below the open transaction: got %v", got[1].values)
	}
	for _, o := range got[1].offsets {
		if o >= open.LastStableOffset {
			t.Fatalf("p1: record at %d, at or above the last stable offset %d", o, open.LastStableOffset)
		}
	}
	rates := tailRates(t, 2*time.Second, ps[0], ps[1], ps[2], pp)
	t.Logf("%s: fetches/s at the tail (MaxWait %v): p0 (abort marker) %.1f, p1 (open transaction) %.1f, p2 (abort marker) %.1f, plain topic %.1f",
		testenv.String(), maxWait, rates[0], rates[1], rates[2], rates[3])
	for i, r := range rates[:3] {
		if r > 2*rates[3]+1 {
			t.Errorf("p%d fetched %.1f times/s at its tail, plain topic %.1f: spinning", i, r, rates[3])
		}
	}
	if st := ps[1].State(); st.Position != open.Position {
		t.Fatalf("p1 moved past the open transaction: position %d, was %d", st.Position, open.Position)
	}

	// the open transaction commits: p1 goes on to its log end
	b.end(ctx, true)
	rest := drainWhile(t, ps[1], time.Minute, func(st PartitionState) bool { return !atLogEnd(st) })
	got[1].values = append(got[1].values, rest.values...)
	got[1].offsets = append(got[1].offsets, rest.offsets...)

	end := testenv.LogEnd(t, brokers, topic, 3)
	delivered := 0
	for i := range ps {
		var all []written
		// what each producer wrote to p<i>, in offset order: the
		// producers wrote in turn, so merging by position works
		all = mergeWritten(plain.wrote[int32(i)], a.wrote[int32(i)], b.wrote[int32(i)])
		want := expect(all, true)
		if !slices.Equal(sorted(got[i].values), sorted(want)) {
			t.Errorf("p%d read_committed:\nwant %v\ngot  %v", i, want, got[i].values)
		}
		if st := ps[i].State(); st.Position != end[i] {
			t.Errorf("p%d: position %d, log end %d: markers must not hold the position below the end", i, st.Position, end[i])
		}
		delivered += len(got[i].values)
	}
	s := f.Stats()
	t.Logf("read_committed: %d records delivered, %d aborted records skipped, %d markers skipped, log ends %v", delivered, s.AbortedRecords, s.ControlBatches, end)
	if s.AbortedRecords != 5*5 {
		t.Errorf("want 25 aborted records skipped (a2 x3, a4 x2 partitions x5), got %d", s.AbortedRecords)
	}

	// read_uncommitted: every data record, markers never
	fu := startFetcher(t, brokers, Config{Isolation: ReadUncommitted, MaxWait: maxWait})
	for i := range 3 {
		pu, err := fu.Add(topic, i, 0)
		if err != nil {
			t.Fatal(err)
		}
		gu := drainWhile(t, pu, time.Minute, func(st PartitionState) bool { return !atLogEnd(st) })
		want := expect(mergeWritten(plain.wrote[int32(i)], a.wrote[int32(i)], b.wrote[int32(i)]), false)
		if !slices.Equal(sorted(gu.values), sorted(want)) {
			t.Errorf("p%d read_uncommitted:\nwant %v\ngot  %v", i, want, gu.values)
		}
		if st := pu.State(); st.Position != end[i] {
			t.Errorf("p%d read_uncommitted: position %d, log end %d", i, st.Position, end[i])
		}
	}
}

func mergeWritten(ws ...[]written) []written {
	var out []written
	for _, w := range ws {
		out = append(out, w...)
	}
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
