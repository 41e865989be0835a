package kfetch

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"slices"
	"strings"
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

// TestEmptyAnswerKeepsPosition: an answer with nothing below a partition's
// bound never moves its position (Kafka answers so while records exist:
// tiered storage, quotas, a preferred read replica). A partition that got
// nothing because an earlier one in the response used the byte limit goes
// first in the next request, at once; one that got nothing while it was
// read first is asked again after a backoff that grows while the answers
// stay empty, and its records are delivered from where it was once they
// come.
func TestEmptyAnswerKeepsPosition(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	c.setLeader("t", 1, 1)
	f, ps := startFake(t, c, Config{MaxWait: 400 * time.Millisecond}, 0, 50, 1, 50)
	byPart := map[int32]*Partition{0: ps[0], 1: ps[1]}

	ff := c.next(t)
	if len(ff.req) != 2 || ff.broker != 1 {
		t.Fatalf("want one request to broker 1 with both partitions, got %+v to %d", ff.req, ff.broker)
	}
	first, second := ff.req[0].partition, ff.req[1].partition
	ff.answer(func(p fakePart) respPartition {
		if p.partition == first {
			return data(t, 50, 10, 1000)
		}
		return respPartition{hwm: 1000, lso: 1000} // nothing: the byte limit ran out
	})
	r := next(t, byPart[first])
	if got := readAll(t, r); r.Next != 60 || len(got) != 10 {
		t.Fatalf("partition with data: want 10 records and next 60, got %d and %d", len(got), r.Next)
	}
	r.Release()
	// the starved partition is first in the next request that has it
	ff = c.nextWith(t, second, func(p fakePart) respPartition { return data(t, p.offset, 5, 1000) })
	if ff.req[0].partition != second || ff.req[0].offset != 50 {
		t.Fatalf("starved partition %d must go first at 50, got %+v", second, ff.req)
	}
	// read first, and still nothing below its bound: no result, position
	// kept, asked again later and later
	emptyFirst := func(p fakePart) respPartition {
		if p.partition == second {
			return respPartition{hwm: 1000, lso: 800}
		}
		return data(t, p.offset, 5, 1000)
	}
	ff.answer(emptyFirst)
	var gaps []time.Duration
	for range 4 {
		answered := time.Now()
		ff = c.nextWith(t, second, func(p fakePart) respPartition { return data(t, p.offset, 5, 1000) })
		gaps = append(gaps, time.Since(answered))
		if ff.req[0].partition != second || ff.req[0].offset != 50 {
			t.Fatalf("after an empty answer: want partition %d asked again at 50, got %+v", second, ff.req)
		}
		ff.answer(emptyFirst)
	}
	t.Logf("delays before asking again after 1, 2, 3, 4 empty answers: %v", gaps)
	if gaps[0] < 15*time.Millisecond || gaps[3] < 120*time.Millisecond {
		t.Errorf("want a backoff from 20ms doubling, got %v", gaps)
	}
	if st := byPart[second].State(); st.Position != 50 {
		t.Fatalf("empty answers moved the position to %d", st.Position)
	}
	ff = c.nextWith(t, second, func(p fakePart) respPartition { return data(t, p.offset, 5, 1000) })
	ff.answer(func(p fakePart) respPartition { return data(t, p.offset, 3, 1000) })
	r = next(t, byPart[second])
	if got := readAll(t, r); r.Offset != 50 || r.Next != 53 || len(got) != 3 || got[0].Offset != 50 {
		t.Fatalf("once records come: want [50, 53) with 3 records, got [%d, %d) %v", r.Offset, r.Next, offsets(got))
	}
	r.Release()
	if s := f.Stats(); s.EmptyAnswers != 5 {
		t.Errorf("want 5 empty answers counted, got %d", s.EmptyAnswers)
	}
}

// TestEmptyAnswerBound: the bound below which an empty answer is "empty" is
// the last stable offset in read_committed and the high watermark in
// read_uncommitted; at its bound a partition long-polls, and an empty
// answer there is no empty answer.
func TestEmptyAnswerBound(t *testing.T) {
	for _, iso := range []IsolationLevel{ReadCommitted, ReadUncommitted} {
		t.Run(iso.String(), func(t *testing.T) {
			c := newFakeCluster()
			c.setLeader("t", 0, 1)
			f, ps := startFake(t, c, Config{Isolation: iso}, 0, 10)
			c.next(t).answer(func(p fakePart) respPartition {
				r := data(t, p.offset, 10, 30)
				r.lso = 20 // an open transaction at 20
				return r
			})
			r := next(t, ps[0])
			readAll(t, r)
			r.Release()
			// at 20: the tail in read_committed, not in read_uncommitted
			c.next(t).answer(func(fakePart) respPartition { return respPartition{hwm: 30, lso: 20} })
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			if r, err := ps[0].Next(ctx); err == nil {
				t.Fatalf("an empty answer delivered [%d, %d)", r.Offset, r.Next)
			}
			want := int64(1)
			if iso == ReadCommitted {
				want = 0
			}
			if s := f.Stats(); s.EmptyAnswers != want {
				t.Errorf("want %d empty answers, got %d", want, s.EmptyAnswers)
			}
			if st := ps[0].State(); st.Position != 20 {
				t.Errorf("position %d, want 20", st.Position)
			}
		})
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

// badAt returns a record set of good records 0..2 and a batch at 3 that
// promises a record more than it holds: Read fails at offset 5.
func badAt(t *testing.T) []byte {
	bad := encodeBatch(t, tBatch{base: 3, lastDelta: 2, records: recs(3, 0, 1)})
	binary.BigEndian.PutUint32(bad[offRecordCount:], 3)
	binary.BigEndian.PutUint32(bad[offCRC:], crc32.Checksum(bad[offAttributes:], castagnoli))
	return append(encodeBatch(t, tBatch{base: 0, records: recs(0, 0, 1, 2)}), bad...)
}

// TestReadErrorStopsByPosition: a decode error stops the partition at the
// bad record even when the partition was paused and resumed between Next
// and the failing Read (which changes what is in flight, not where the
// caller is), and drops the result fetched ahead; after SetOffset the
// partition is the caller's again and a late failing Read of an older
// result leaves it alone.
func TestReadErrorStopsByPosition(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	f, ps := startFake(t, c, Config{}, 0, 0)
	p0 := ps[0]
	c.next(t).answer(func(fakePart) respPartition { return respPartition{hwm: 10, lso: 10, records: badAt(t)} })
	r := next(t, p0)
	c.next(t).answer(func(p fakePart) respPartition { return data(t, p.offset, 2, 10) }) // ahead, from 6
	testenv_eventually(t, func() bool { f.mu.Lock(); defer f.mu.Unlock(); return p0.buffered != nil })
	p0.Pause()
	p0.Resume()
	c.next(t).answer(func(p fakePart) respPartition { return data(t, p.offset, 2, 10) }) // ahead again, from 6
	testenv_eventually(t, func() bool { f.mu.Lock(); defer f.mu.Unlock(); return p0.buffered != nil })
	for {
		recs, err := r.Read(100)
		if err != nil || len(recs) == 0 {
			break
		}
	}
	if r.Err == nil || r.Next != 5 {
		t.Fatalf("want a decode error and Next 5, got %v %d", r.Err, r.Next)
	}
	r.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if r2, err := p0.Next(ctx); err == nil {
		t.Fatalf("stopped at 5 after a pause, yet Next returned [%d, %d)", r2.Offset, r2.Next)
	}
	if st := p0.State(); st.Position != 5 {
		t.Fatalf("position %d, want 5", st.Position)
	}
	if held := f.Stats().MemoryHeld; held != 0 {
		t.Fatalf("the dropped result still holds %d bytes", held)
	}

	// a result taken, then the caller moves on with SetOffset; its
	// failing Read does not take the partition back
	p0.SetOffset(0)
	c.next(t).answer(func(fakePart) respPartition { return respPartition{hwm: 10, lso: 10, records: badAt(t)} })
	r = next(t, p0)
	p0.SetOffset(6)
	readAll := func() {
		for {
			recs, err := r.Read(100)
			if err != nil || len(recs) == 0 {
				return
			}
		}
	}
	readAll()
	r.Release()
	// The fetch begun ahead from 6 before SetOffset(6) may still be in
	// flight: SetOffset dropped it (its epoch is old) and a second fetch
	// follows, so every fetch is answered until the result comes; none may
	// be at 5.
	got := make(chan *Result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r, _ := p0.Next(ctx)
		got <- r
	}()
	for r = nil; r == nil; {
		select {
		case r = <-got:
			if r == nil {
				t.Fatal("no result after SetOffset(6)")
			}
		case ff := <-c.fetches:
			if ff.req[0].offset != 6 {
				t.Fatalf("after SetOffset(6) and a late decode error at 5: fetch at %d", ff.req[0].offset)
			}
			ff.answer(func(p fakePart) respPartition { return data(t, 6, 2, 10) })
		}
	}
	if r.Offset != 6 || r.Err != nil {
		t.Fatalf("want a result at 6, got %d %v", r.Offset, r.Err)
	}
	r.Release()
}

// TestSetOffsetNegative: a sentinel offset is refused, the position kept.
func TestSetOffsetNegative(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	_, ps := startFake(t, c, Config{}, 0, 7)
	for _, o := range []int64{-1, -2} {
		if err := ps[0].SetOffset(o); err == nil || !strings.Contains(err.Error(), "resolve it") {
			t.Errorf("SetOffset(%d): want an error, got %v", o, err)
		}
	}
	if st := ps[0].State(); st.Position != 7 {
		t.Errorf("position %d, want 7", st.Position)
	}
	if err := ps[0].SetOffset(0); err != nil {
		t.Errorf("SetOffset(0): %v", err)
	}
}

// TestThrottle: a response carrying a throttle time (KIP-219: the broker
// answers at once, with no partitions if it throttles the whole fetch)
// holds every request to that broker until it ends.
func TestThrottle(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	f, ps := startFake(t, c, Config{}, 0, 0)
	ff := c.next(t)
	answered := time.Now()
	ff.reply <- fakeReply{res: &fetchResp{throttle: 300 * time.Millisecond}} // no partitions
	ff = c.next(t)
	waited := time.Since(answered)
	if waited < 290*time.Millisecond {
		t.Errorf("asked again %v after a 300ms throttle", waited)
	}
	ff.answer(func(p fakePart) respPartition { return data(t, 0, 2, 2) })
	r := next(t, ps[0])
	if got := readAll(t, r); len(got) != 2 {
		t.Fatalf("want 2 records, got %d", len(got))
	}
	r.Release()
	t.Logf("asked again %v after a 300ms throttle; %+v", waited, f.Stats().Throttles)
	if s := f.Stats(); s.Throttles != 1 {
		t.Errorf("want 1 throttle counted, got %d", s.Throttles)
	}
}

// TestConcurrentReadsOfOnePartition: two results of one partition read at
// once from two goroutines share its header-name interner; run with -race.
func TestConcurrentReadsOfOnePartition(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	_, ps := startFake(t, c, Config{}, 0, 0)
	withHeaders := func(from int64) respPartition {
		rs := recs(from, seq(500)...)
		for i := range rs {
			rs[i].headers = []wire.Header{{Key: fmt.Sprintf("h%d", i%300), Value: []byte("v")}, {Key: "trace", Value: nil}}
		}
		return respPartition{hwm: 1 << 20, lso: 1 << 20, records: encodeBatch(t, tBatch{base: from, records: rs})}
	}
	c.next(t).answer(func(p fakePart) respPartition { return withHeaders(p.offset) })
	r1 := next(t, ps[0])
	c.next(t).answer(func(p fakePart) respPartition { return withHeaders(p.offset) })
	r2 := next(t, ps[0])
	var wg sync.WaitGroup
	for _, r := range []*Result{r1, r2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.Release()
			n := 0
			for {
				recs, err := r.Read(3)
				if err != nil {
					t.Error(err)
					return
				}
				if len(recs) == 0 {
					break
				}
				for _, rec := range recs {
					if len(rec.Headers) != 2 || rec.Headers[0].Key != fmt.Sprintf("h%d", (rec.Offset-r.Offset)%300) || rec.Headers[1].Key != "trace" {
						t.Errorf("record %d: headers %+v", rec.Offset, rec.Headers)
						return
					}
					n++
				}
			}
			if n != 500 {
				t.Errorf("read %d records, want 500", n)
			}
		}()
	}
	wg.Wait()
}

// TestEmptyAnswersShowInState: a partition the broker keeps answering
// empty below its bound says so in State().Err (ErrNoData) after ten such
// answers in a row, and stops saying so once records come.
func TestEmptyAnswersShowInState(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	_, ps := startFake(t, c, Config{MaxWait: 20 * time.Millisecond}, 0, 5)
	for i := range 10 {
		if err := ps[0].State().Err; err != nil {
			t.Fatalf("after %d empty answers: State().Err %v", i, err)
		}
		c.next(t).answer(func(fakePart) respPartition { return respPartition{hwm: 100, lso: 100} })
	}
	testenv_eventually(t, func() bool { return errors.Is(ps[0].State().Err, ErrNoData) })
	st := ps[0].State()
	t.Logf("after 10 empty answers: position %d, %v", st.Position, st.Err)
	if st.Position != 5 {
		t.Fatalf("position %d, want 5", st.Position)
	}
	c.next(t).answer(func(p fakePart) respPartition { return data(t, p.offset, 2, 100) })
	r := next(t, ps[0])
	r.Release()
	if err := ps[0].State().Err; err != nil {
		t.Fatalf("records came, yet State().Err is %v", err)
	}
}
