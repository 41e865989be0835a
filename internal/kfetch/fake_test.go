package kfetch

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	meta "github.com/segmentio/kafka-go/protocol/metadata"

	"github.com/kbridge/kbridge/internal/wire"
)

// fakeCluster is a kafka.RoundTripper that plays the cluster: metadata from
// a leader table, and every fetch request handed to the test, which answers
// it (or not yet) as a broker would.
type fakeCluster struct {
	mu      sync.Mutex
	leaders map[tp]int32
	metas   int
	fetches chan *fakeFetch
}

type fakeFetch struct {
	broker int32
	req    []fakePart // in request order
	max    int32
	wait   time.Duration
	reply  chan fakeReply
}

type fakePart struct {
	topic     string
	partition int32
	offset    int64
}

type fakeReply struct {
	res *fetchResp
	err error
}

func newFakeCluster() *fakeCluster {
	return &fakeCluster{leaders: map[tp]int32{}, fetches: make(chan *fakeFetch, 16)}
}

func (c *fakeCluster) setLeader(topic string, partition, leader int32) {
	c.mu.Lock()
	c.leaders[tp{topic, partition}] = leader
	c.mu.Unlock()
}

func (c *fakeCluster) RoundTrip(ctx context.Context, _ net.Addr, msg protocol.Message) (protocol.Message, error) {
	switch m := msg.(type) {
	case *metaMsg:
		c.mu.Lock()
		defer c.mu.Unlock()
		c.metas++
		res := &meta.Response{}
		for _, topic := range m.req.TopicNames {
			rt := meta.ResponseTopic{Name: topic}
			for k, l := range c.leaders {
				if k.topic == topic {
					rt.Partitions = append(rt.Partitions, meta.ResponsePartition{PartitionIndex: k.partition, LeaderID: l})
				}
			}
			if len(rt.Partitions) == 0 {
				rt.ErrorCode = int16(kafka.UnknownTopicOrPartition)
			}
			res.Topics = append(res.Topics, rt)
		}
		return &metaResp{res: res}, nil
	case *fetchMsg:
		ff := &fakeFetch{broker: m.broker, max: m.req.MaxBytes, wait: time.Duration(m.req.MaxWaitTime) * time.Millisecond, reply: make(chan fakeReply, 1)}
		for _, t := range m.req.Topics {
			for _, p := range t.Partitions {
				ff.req = append(ff.req, fakePart{t.Topic, p.Partition, p.FetchOffset})
			}
		}
		select {
		case c.fetches <- ff:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		select {
		case r := <-ff.reply:
			if r.err != nil {
				return nil, r.err
			}
			return r.res, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return nil, errors.New("fake cluster: unexpected message")
}

// next returns the next fetch request, failing the test after a while.
func (c *fakeCluster) next(t *testing.T) *fakeFetch {
	t.Helper()
	select {
	case ff := <-c.fetches:
		return ff
	case <-time.After(10 * time.Second):
		t.Fatal("no fetch request")
		return nil
	}
}

// none checks that no fetch request comes within d.
func (c *fakeCluster) none(t *testing.T, d time.Duration, why string) {
	t.Helper()
	select {
	case ff := <-c.fetches:
		t.Fatalf("unexpected fetch request %+v: %s", ff.req, why)
	case <-time.After(d):
	}
}

// answer replies with one entry per request partition, in request order,
// from fn (nil: empty, no error, high watermark = offset).
func (ff *fakeFetch) answer(fn func(p fakePart) respPartition) {
	res := &fetchResp{}
	for _, p := range ff.req {
		rp := respPartition{partition: p.partition, hwm: p.offset, lso: p.offset, logStart: 0}
		if fn != nil {
			rp = fn(p)
			rp.partition = p.partition
		}
		if n := len(res.topics); n == 0 || res.topics[n-1].topic != p.topic {
			res.topics = append(res.topics, respTopic{topic: p.topic})
		}
		last := &res.topics[len(res.topics)-1]
		last.partitions = append(last.partitions, rp)
		res.bytes += int64(len(rp.records))
	}
	ff.reply <- fakeReply{res: res}
}

func (ff *fakeFetch) parts() []int32 {
	var out []int32
	for _, p := range ff.req {
		out = append(out, p.partition)
	}
	return out
}

// startFake returns a Fetcher on the fake cluster, with the partitions
// added before it runs (so one metadata request finds all their leaders).
func startFake(t *testing.T, c *fakeCluster, cfg Config, parts ...int) (*Fetcher, []*Partition) {
	t.Helper()
	cfg.Client = &kafka.Client{Addr: kafka.TCP("fake:9092"), Transport: c}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = 50 * time.Millisecond
	}
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ps []*Partition
	for i := 0; i+1 < len(parts); i += 2 {
		p, err := f.Add("t", parts[i], int64(parts[i+1]))
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return f, ps
}

// nextWith returns the next fetch request holding partition, answering the
// others with fn.
func (c *fakeCluster) nextWith(t *testing.T, partition int32, fn func(fakePart) respPartition) *fakeFetch {
	t.Helper()
	for {
		ff := c.next(t)
		if slices.Contains(ff.parts(), partition) {
			return ff
		}
		ff.answer(fn)
	}
}

func next(t *testing.T, p *Partition) *Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := p.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return r
}

func data(t *testing.T, from int64, n int, hwm int64) respPartition {
	return respPartition{hwm: hwm, lso: hwm, logStart: 0, records: encodeBatch(t, tBatch{base: from, records: recs(from, seq(n)...)})}
}

// TestEmptyRangeRule: a partition that answers with nothing below its bound
// moves to the bound only if the broker read it while no partition before it
// in the response had returned data (then it had to return a batch if there
// was one); otherwise it goes first in the next request.
func TestEmptyRangeRule(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	c.setLeader("t", 1, 1)
	f, ps := startFake(t, c, Config{}, 0, 50, 1, 50)
	byPart := map[int32]*Partition{0: ps[0], 1: ps[1]}

	ff := c.next(t)
	if len(ff.req) != 2 || ff.broker != 1 {
		t.Fatalf("want one request to broker 1 with both partitions, got %+v to %d", ff.req, ff.broker)
	}
	first, second := ff.req[0].partition, ff.req[1].partition
	ff.answer(func(p fakePart) respPartition {
		if p.partition == first {
			return data(t, 50, 10, 100)
		}
		return respPartition{hwm: 100, lso: 100} // nothing: the byte limit ran out
	})
	r := next(t, byPart[first])
	if got := readAll(t, r); r.Next != 60 || len(got) != 10 {
		t.Fatalf("partition with data: want 10 records and next 60, got %d and %d", len(got), r.Next)
	}
	r.Release()
	// the starved partition is first in the next request that has it
	ff = c.nextWith(t, second, func(p fakePart) respPartition { return data(t, p.offset, 5, 100) })
	if ff.req[0].partition != second || ff.req[0].offset != 50 {
		t.Fatalf("starved partition %d must go first at 50, got %+v", second, ff.req)
	}
	ff.answer(func(p fakePart) respPartition {
		if p.partition == second {
			return respPartition{hwm: 100, lso: 80, logStart: 0} // read first: nothing below 80
		}
		return data(t, p.offset, 5, 100) // the other one still has data
	})
	r = next(t, byPart[second])
	if got := readAll(t, r); r.Offset != 50 || r.Next != 80 || len(got) != 0 || r.Err != nil {
		t.Fatalf("empty range below the last stable offset: want [50, 80) with no records, got [%d, %d) %d records %v", r.Offset, r.Next, len(got), r.Err)
	}
	r.Release()
	if s := f.Stats(); s.EmptyAdvances != 1 {
		t.Errorf("want 1 empty advance, got %d", s.EmptyAdvances)
	}
}

// TestReadUncommittedBound: in read_uncommitted the empty-range bound is the
// high watermark; a partition at its bound is not moved.
func TestReadUncommittedBound(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	_, ps := startFake(t, c, Config{Isolation: ReadUncommitted}, 0, 10)
	p0 := ps[0]
	c.next(t).answer(func(fakePart) respPartition { return respPartition{hwm: 30, lso: 20} })
	r := next(t, p0)
	if r.Next != 30 {
		t.Fatalf("want next 30 (high watermark), got %d", r.Next)
	}
	r.Release()
	// at the bound: a long poll, answered empty, moves nothing
	ff := c.next(t)
	ff.answer(func(fakePart) respPartition { return respPartition{hwm: 30, lso: 30} })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if r, err := p0.Next(ctx); err == nil {
		t.Fatalf("a fetch at the log end delivered [%d, %d)", r.Offset, r.Next)
	}
}

// TestLeaderMove: NOT_LEADER_OR_FOLLOWER makes the fetcher ask for metadata
// and fetch from the new leader; nothing is reported to the caller.
func TestLeaderMove(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	f, ps := startFake(t, c, Config{}, 0, 0)
	p0 := ps[0]
	ff := c.next(t)
	if ff.broker != 1 {
		t.Fatalf("want broker 1, got %d", ff.broker)
	}
	c.setLeader("t", 0, 2)
	ff.answer(func(fakePart) respPartition {
		return respPartition{errorCode: int16(kafka.NotLeaderForPartition), hwm: -1, lso: -1, logStart: -1}
	})
	ff = c.next(t)
	if ff.broker != 2 || ff.req[0].offset != 0 {
		t.Fatalf("want a fetch at 0 from broker 2, got %+v from %d", ff.req, ff.broker)
	}
	ff.answer(func(fakePart) respPartition { return data(t, 0, 3, 3) })
	r := next(t, p0)
	if got := readAll(t, r); len(got) != 3 || r.Err != nil {
		t.Fatalf("want 3 records after the move, got %d %v", len(got), r.Err)
	}
	r.Release()
	s := f.Stats()
	if s.PartitionErrors != 1 || s.MetadataRequests < 2 {
		t.Errorf("want 1 partition error and 2 metadata requests, got %d and %d", s.PartitionErrors, s.MetadataRequests)
	}
}

// TestRequestErrorBacksOff: a failed request is retried after a backoff,
// with the leaders asked again.
func TestRequestErrorBacksOff(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	f, ps := startFake(t, c, Config{}, 0, 0)
	p0 := ps[0]
	ff := c.next(t)
	failed := time.Now()
	ff.reply <- fakeReply{err: errors.New("connection reset by peer")}
	ff = c.next(t)
	if waited := time.Since(failed); waited < 90*time.Millisecond {
		t.Errorf("retried after %v: want a backoff of 100ms", waited)
	}
	ff.answer(func(fakePart) respPartition { return data(t, 0, 2, 2) })
	r := next(t, p0)
	r.Release()
	if s := f.Stats(); s.RequestErrors != 1 || s.MetadataRequests < 2 {
		t.Errorf("want 1 request error and the metadata asked again, got %+v", s)
	}
}

// TestOneLongPollPerBroker: partitions at their log end wait in one request
// per broker; a partition with data is not held behind it.
func TestOneLongPollPerBroker(t *testing.T) {
	c := newFakeCluster()
	for i := range 4 {
		c.setLeader("t", int32(i), 1)
	}
	f, _ := startFake(t, c, Config{MaxWait: 10 * time.Second}, 0, 0, 1, 0)
	// first answer: both empty at their end (hwm 0)
	c.next(t).answer(nil)
	poll := c.next(t) // the long poll of p0, p1: not answered yet
	if !slices.Equal(sorted32(poll.parts()), []int32{0, 1}) || poll.wait != 10*time.Second {
		t.Fatalf("want a long poll of p0, p1, got %+v", poll.req)
	}
	p2, _ := f.Add("t", 2, 0) // log end unknown: may have data
	ff := c.next(t)
	if !slices.Equal(ff.parts(), []int32{2}) {
		t.Fatalf("want p2 fetched at once beside the long poll, got %+v", ff.req)
	}
	ff.answer(nil) // p2 at its end too
	testenv_eventually(t, func() bool { f.mu.Lock(); defer f.mu.Unlock(); return !p2.inflight })
	f.Add("t", 3, 0)
	ff = c.next(t) // p3 unknown: fetched; p2, at its end, rides along
	if !slices.Equal(sorted32(ff.parts()), []int32{2, 3}) || ff.req[0].partition != 3 {
		t.Fatalf("want p3 first, p2 riding along, got %+v", ff.req)
	}
	ff.answer(nil)
	c.none(t, 200*time.Millisecond, "a second long poll while one is in flight")
	poll.answer(nil)
	ff = c.next(t)
	if !slices.Equal(sorted32(ff.parts()), []int32{0, 1, 2, 3}) {
		t.Fatalf("want one long poll of all four, got %+v", ff.req)
	}
	_ = p2
}

func sorted32(s []int32) []int32 {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestFatalPartitionError: an error that is not retriable is reported once,
// and the partition is fetched again only after SetOffset.
func TestFatalPartitionError(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	_, ps := startFake(t, c, Config{}, 0, 5)
	p0 := ps[0]
	c.next(t).answer(func(fakePart) respPartition {
		return respPartition{errorCode: int16(kafka.TopicAuthorizationFailed), hwm: -1, lso: -1, logStart: -1}
	})
	r := next(t, p0)
	if !errors.Is(r.Err, kafka.TopicAuthorizationFailed) || r.Next != 5 {
		t.Fatalf("want TOPIC_AUTHORIZATION_FAILED at 5, got %v next %d", r.Err, r.Next)
	}
	r.Release()
	c.none(t, 300*time.Millisecond, "a partition stopped by an error is fetched again")
	p0.SetOffset(5)
	c.next(t).answer(func(fakePart) respPartition { return data(t, 5, 1, 6) })
	r = next(t, p0)
	if got := readAll(t, r); len(got) != 1 || r.Err != nil {
		t.Fatalf("after SetOffset: want 1 record, got %d %v", len(got), r.Err)
	}
	r.Release()
}

// TestBudgetHoldsFetches: while results held by callers use the budget, no
// request goes; a Release lets the next one go.
func TestBudgetHoldsFetches(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	c.setLeader("t", 1, 1)
	// a result of 200 records of 150 B (a 32.6 KB set in a 40 KiB buffer)
	// holds about 41 KiB: two fit in the budget with less than a third
	// fetch needs (32 KiB x expansion 2) left over
	f, ps := startFake(t, c, Config{MemoryBytes: 136 << 10, MaxBytes: 32 << 10, PartitionMaxBytes: 32 << 10}, 0, 0)
	p0 := ps[0]
	ff := c.next(t)
	big := func(from int64) respPartition {
		rs := recs(from, seq(200)...)
		for i := range rs {
			rs[i].value = make([]byte, 150)
		}
		return respPartition{hwm: 10_000, lso: 10_000, records: encodeBatch(t, tBatch{base: from, records: rs})}
	}
	ff.answer(func(fakePart) respPartition { return big(0) })
	r0 := next(t, p0) // held, read; p0's next result is fetched ahead
	readAll(t, r0)
	c.next(t).answer(func(fakePart) respPartition { return big(200) })
	testenv_eventually(t, func() bool { f.mu.Lock(); defer f.mu.Unlock(); return p0.buffered != nil })
	s := f.Stats()
	t.Logf("held %d of %d bytes (expansion %.2f)", s.MemoryHeld, s.MemoryBudget, s.Expansion)
	p1, _ := f.Add("t", 1, 0)
	c.none(t, 300*time.Millisecond, "a fetch beyond the budget")
	if f.Stats().BudgetWaits == 0 {
		t.Fatal("no budget wait counted")
	}
	r0.Release()
	ff = c.next(t)
	if !slices.Contains(ff.parts(), 1) {
		t.Fatalf("after Release: want p1 fetched, got %+v", ff.req)
	}
	ff.answer(nil)
	_ = p1
}

func testenv_eventually(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestReadErrorStopsPartition: a record that cannot be decoded ends the
// result after the records before it, moves Next back to it, and stops the
// partition (the fetch begun ahead is dropped) until SetOffset.
func TestReadErrorStopsPartition(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	_, ps := startFake(t, c, Config{}, 0, 0)
	p0 := ps[0]
	bad := encodeBatch(t, tBatch{base: 3, lastDelta: 2, records: recs(3, 0, 1)})
	binary.BigEndian.PutUint32(bad[offRecordCount:], 3) // promises a record it lacks
	binary.BigEndian.PutUint32(bad[offCRC:], crc32.Checksum(bad[offAttributes:], castagnoli))
	c.next(t).answer(func(fakePart) respPartition {
		return respPartition{hwm: 10, lso: 10, records: append(encodeBatch(t, tBatch{base: 0, records: recs(0, 0, 1, 2)}), bad...)}
	})
	r := next(t, p0)
	if r.Next != 6 {
		t.Fatalf("before reading: next %d, want 6", r.Next)
	}
	// the fetch from 6 goes out at once; its answer must be dropped
	ahead := c.next(t)
	var got []int64
	var err error
	for {
		var recs []wire.Record
		recs, err = r.Read(100)
		for _, rec := range recs {
			got = append(got, rec.Offset)
		}
		if err != nil || len(recs) == 0 {
			break
		}
	}
	var ce *CorruptError
	if !errors.As(err, &ce) || !errors.Is(r.Err, err) && r.Err != err {
		t.Fatalf("want a *CorruptError from Read and in Err, got %v / %v", err, r.Err)
	}
	if !slices.Equal(got, []int64{0, 1, 2, 3, 4}) || r.Next != 5 {
		t.Fatalf("want records 0-4 and next 5, got %v next %d", got, r.Next)
	}
	r.Release()
	ahead.answer(func(p fakePart) respPartition { return data(t, p.offset, 2, 10) })
	c.none(t, 300*time.Millisecond, "a partition stopped by a decode error is fetched again")
	if st := p0.State(); st.Position != 5 {
		t.Fatalf("position %d, want 5", st.Position)
	}
	p0.SetOffset(6) // skip the bad record
	ff := c.next(t)
	if ff.req[0].offset != 6 {
		t.Fatalf("after SetOffset(6): fetch at %d", ff.req[0].offset)
	}
	ff.answer(func(p fakePart) respPartition { return data(t, 6, 2, 10) })
	r = next(t, p0)
	if got := readAll(t, r); len(got) != 2 || got[0].Offset != 6 {
		t.Fatalf("after SetOffset: got %v", offsets(got))
	}
	r.Release()
}
