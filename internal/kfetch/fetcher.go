package kfetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol/fetch"
	meta "github.com/segmentio/kafka-go/protocol/metadata"
)

// Fetcher fetches many partitions with few requests: one multi-partition
// fetch per partition leader (and a few more while some partitions have data
// and others wait at the log end), within a memory budget, prefetching one
// result per partition while the caller works on the previous one.
//
// Create it with New, add partitions with Add, and run it with Run. Its
// methods and those of its Partitions are safe for concurrent use.
type Fetcher struct {
	cfg       Config
	addr      kafka.Client // Addr of the cluster
	transport kafka.RoundTripper
	log       *slog.Logger

	mu       sync.Mutex
	state    int
	parts    map[tp]*Partition
	order    []*Partition // rotation order
	rot      int
	brokers  map[int32]*brokerState
	used     int64 // bytes held by buffered and caller-held results
	reserved int64 // bytes reserved by requests in flight
	meta     metaState
	stats    Stats
	records  atomic.Int64
	wake     chan struct{}
	wg       sync.WaitGroup
	plans    map[int32]*plan // scratch of schedule
	// expansion is the memory a fetched byte takes once decoded (record
	// set buffer, decoded records, decompressed data), measured: requests
	// ask for avail/expansion bytes so their results fit the budget.
	expansion float64
}

const (
	stateNew = iota
	stateRunning
	stateStopped
)

type tp struct {
	topic     string
	partition int32
}

type brokerState struct {
	inflight int
	longPoll bool // a request of partitions at their log end is in flight
	retryAt  time.Time
	backoff  backoff
	failing  bool
	warned   time.Time
}

type metaState struct {
	inFlight bool
	retryAt  time.Time
	backoff  backoff
	warned   time.Time
}

// plan sorts the fetchable partitions of one broker for one scheduling pass.
type plan struct {
	first []*Partition // got nothing last time while behind: placed first
	data  []*Partition // behind the log end (or not known yet)
	tail  []*Partition // at the log end
}

// Stats is a snapshot of a Fetcher's counters.
type Stats struct {
	Requests         int64 // fetch requests sent
	PartitionFetches int64 // partition entries in them
	RequestErrors    int64 // requests that failed as a whole (retried)
	PartitionErrors  int64 // retriable partition errors (retried)
	MetadataRequests int64
	MetadataErrors   int64 // metadata requests that failed (retried)
	Bytes            int64 // record set bytes received
	Records          int64 // records delivered (decoded by Next)
	AbortedRecords   int64 // records of aborted transactions skipped
	ControlBatches   int64 // transaction markers skipped
	// EmptyAnswers counts answers that brought nothing below the
	// partition's bound (tiered storage still reading, a quota, ...):
	// the partition was asked again after a backoff, its position kept.
	EmptyAnswers   int64
	Redirects      int64 // answers naming a preferred read replica instead of data (asked again)
	Throttles      int64 // responses with a throttle time: the broker was not asked before it ended
	MemoryBudget   int64
	MemoryHeld     int64   // by results not yet released (buffered or with callers)
	MemoryReserved int64   // by requests in flight
	MemoryPeak     int64   // highest held + reserved
	BudgetWaits    int64   // scheduling passes that found no budget left
	Expansion      float64 // memory per fetched byte, measured (records, decompression)
	Partitions     int
}

// New returns a Fetcher for cfg, or the configuration's problems.
func New(cfg Config) (*Fetcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	t := cfg.Client.Transport
	if t == nil {
		t = kafka.DefaultTransport
	}
	return &Fetcher{
		cfg:       cfg,
		addr:      kafka.Client{Addr: cfg.Client.Addr},
		transport: t,
		log:       cfg.Logger,
		parts:     make(map[tp]*Partition),
		brokers:   make(map[int32]*brokerState),
		plans:     make(map[int32]*plan),
		wake:      make(chan struct{}, 1),
		stats:     Stats{MemoryBudget: cfg.MemoryBytes},
		expansion: 2,
	}, nil
}

// Add starts fetching topic/partition at offset (≥ 0) and returns its
// handle. A partition can be added once; Close it to add it again.
func (f *Fetcher) Add(topic string, partition int, offset int64) (*Partition, error) {
	if offset < 0 {
		return nil, fmt.Errorf("kfetch: add %s/%d: offset %d: resolve it to an offset first", topic, partition, offset)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == stateStopped {
		return nil, ErrClosed
	}
	k := tp{topic, int32(partition)}
	if _, ok := f.parts[k]; ok {
		return nil, fmt.Errorf("kfetch: %s/%d is already being fetched", topic, partition)
	}
	p := &Partition{
		f: f, topic: topic, partition: int32(partition),
		ready: make(chan struct{}, 1),
		pos:   offset, leader: -1, hwm: -1, lso: -1, logStart: -1,
	}
	f.parts[k] = p
	f.order = append(f.order, p)
	f.kick()
	return p, nil
}

// Stats returns a snapshot of the counters.
func (f *Fetcher) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stats
	s.Records = f.records.Load()
	s.MemoryHeld, s.MemoryReserved, s.Expansion = f.used, f.reserved, f.expansion
	s.Partitions = len(f.order)
	return s
}

// Run fetches until ctx is done, then waits for the requests in flight to
// end, releases what was fetched and not taken, and returns nil. Next of
// every Partition then returns ErrClosed. Run may be called once.
func (f *Fetcher) Run(ctx context.Context) error {
	f.mu.Lock()
	if f.state != stateNew {
		f.mu.Unlock()
		return errors.New("kfetch: Run called twice")
	}
	f.state = stateRunning
	f.mu.Unlock()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		f.mu.Lock()
		wait := f.schedule(ctx, time.Now())
		f.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			f.shutdown()
			return nil
		case <-f.wake:
		case <-timer.C:
		}
	}
}

func (f *Fetcher) shutdown() {
	f.wg.Wait() // requests see ctx done and end
	f.mu.Lock()
	f.state = stateStopped
	var rel []*Result
	for _, p := range f.order {
		if p.buffered != nil {
			rel = append(rel, p.buffered)
			p.buffered = nil
		}
		p.signal()
	}
	f.mu.Unlock()
	for _, r := range rel {
		r.Release()
	}
}

func (f *Fetcher) kick() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// charge adds n bytes held by a result.
func (f *Fetcher) charge(n int64) {
	f.mu.Lock()
	f.used += n
	f.stats.MemoryPeak = max(f.stats.MemoryPeak, f.used+f.reserved)
	f.mu.Unlock()
}

// uncharge returns the n bytes a result held, of which it used used for a
// record set of size bytes, and learns from it what a fetched byte costs:
// the estimate follows a higher cost at once and a lower one slowly. size
// 0: nothing to learn (the result was not read to the end).
func (f *Fetcher) uncharge(n, used int64, size int) {
	f.mu.Lock()
	f.used -= n
	if size >= 1<<10 {
		obs := min(max(float64(used)/float64(size), 1), 64)
		f.expansion = max(obs, 0.9*f.expansion+0.1*obs)
	}
	f.mu.Unlock()
	f.kick()
}

func (f *Fetcher) broker(id int32) *brokerState {
	b := f.brokers[id]
	if b == nil {
		b = &brokerState{}
		f.brokers[id] = b
	}
	return b
}

// schedule sends the requests that may go now and returns how long to wait
// at most before the next pass (backoffs ending). Called with f.mu held.
func (f *Fetcher) schedule(ctx context.Context, now time.Time) time.Duration {
	wait := time.Hour
	until := func(t time.Time) {
		if d := t.Sub(now); d > 0 {
			wait = min(wait, d)
		}
	}
	var topics []string
	for _, pl := range f.plans {
		pl.first, pl.data, pl.tail = pl.first[:0], pl.data[:0], pl.tail[:0]
	}
	n := len(f.order)
	for i := range n {
		p := f.order[(f.rot+i)%n]
		if p.closed || p.paused || p.failed || p.inflight || p.buffered != nil {
			continue
		}
		if p.leader < 0 {
			if !containsString(topics, p.topic) {
				topics = append(topics, p.topic)
			}
			continue
		}
		if now.Before(p.retryAt) {
			until(p.retryAt)
			continue
		}
		pl := f.plans[p.leader]
		if pl == nil {
			pl = &plan{}
			f.plans[p.leader] = pl
		}
		switch {
		case p.starved:
			pl.first = append(pl.first, p)
		case p.atTail(f.cfg.Isolation):
			pl.tail = append(pl.tail, p)
		default:
			pl.data = append(pl.data, p)
		}
	}
	if n > 0 {
		f.rot = (f.rot + 1) % n
	}
	if len(topics) > 0 && !f.meta.inFlight {
		if now.Before(f.meta.retryAt) {
			until(f.meta.retryAt)
		} else {
			f.refreshMetadata(ctx, topics)
		}
	}
	floor := min(int64(f.cfg.PartitionMaxBytes), int64(f.cfg.MaxBytes))
	for id, pl := range f.plans {
		if len(pl.first)+len(pl.data)+len(pl.tail) == 0 {
			continue
		}
		b := f.broker(id)
		if now.Before(b.retryAt) {
			until(b.retryAt)
			continue
		}
		if b.inflight >= f.cfg.MaxInFlight {
			continue
		}
		var parts []*Partition
		longPoll := false
		switch {
		case len(pl.first)+len(pl.data) > 0:
			// partitions with data make the request return at once;
			// those at the log end ride along
			parts = append(append(append(parts, pl.first...), pl.data...), pl.tail...)
		case !b.longPoll:
			parts, longPoll = append(parts, pl.tail...), true
		default:
			continue // one long poll at a time; it returns within MaxWait
		}
		// Reserve what the results will take once decoded; ask the
		// broker for what fits in it. With nothing held or in flight a
		// request always goes, whatever its size: progress first.
		avail := f.cfg.MemoryBytes - f.used - f.reserved
		maxBytes := min(int64(f.cfg.MaxBytes), int64(len(parts))*int64(f.cfg.PartitionMaxBytes))
		if float64(maxBytes)*f.expansion > float64(avail) {
			maxBytes = int64(float64(avail) / f.expansion)
		}
		if maxBytes < floor && (f.used > 0 || f.reserved > 0) {
			f.stats.BudgetWaits++
			continue // a Release wakes the scheduler
		}
		reserve := min(int64(math.Ceil(float64(maxBytes)*f.expansion)), max(avail, 0))
		maxBytes = max(maxBytes, 1)
		f.send(ctx, id, parts, reserve, int32(maxBytes), longPoll)
	}
	return wait
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func containsString(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// request is a fetch in flight.
type request struct {
	broker   int32
	reserve  int64
	longPoll bool
	entries  []entry
}

type entry struct {
	p      *Partition
	epoch  uint64
	offset int64
	seen   bool
	// expansion is the cost of a fetched byte the request reserved at:
	// its result's decoding is expected to take that much (spare), not
	// what was learned while it was in flight (a higher figure charged
	// more than was reserved, and put the peak over the budget)
	expansion float64
}

// find returns the entry of topic/partition, looking at position *k first
// (responses keep the request's order).
func (r *request) find(topic string, partition int32, k *int) *entry {
	if *k < len(r.entries) {
		if e := &r.entries[*k]; e.p.topic == topic && e.p.partition == partition {
			*k++
			return e
		}
	}
	for i := range r.entries {
		if e := &r.entries[i]; e.p.topic == topic && e.p.partition == partition {
			return e
		}
	}
	return nil
}

// send starts one fetch request to broker id. Partitions are sent in the
// order given, grouped by topic in order of first appearance: the broker
// reads them in that order until MaxBytes is used, so the first ones are
// the ones sure to get data. Called with f.mu held.
func (f *Fetcher) send(ctx context.Context, id int32, parts []*Partition, reserve int64, maxBytes int32, longPoll bool) {
	req := &request{broker: id, reserve: reserve, longPoll: longPoll, entries: make([]entry, 0, len(parts))}
	msg := &fetchMsg{broker: id, clientID: f.cfg.ClientID, req: fetch.Request{
		ReplicaID:      -1,
		MaxWaitTime:    int32(f.cfg.MaxWait / time.Millisecond),
		MinBytes:       1,
		MaxBytes:       maxBytes,
		IsolationLevel: f.cfg.Isolation.wire(),
		SessionID:      0,
		SessionEpoch:   -1, // a full fetch outside any fetch session
	}}
	topicIndex := make(map[string]int, 1)
	for _, p := range parts {
		ti, ok := topicIndex[p.topic]
		if !ok {
			ti = len(msg.req.Topics)
			topicIndex[p.topic] = ti
			msg.req.Topics = append(msg.req.Topics, fetch.RequestTopic{Topic: p.topic})
		}
		msg.req.Topics[ti].Partitions = append(msg.req.Topics[ti].Partitions, fetch.RequestPartition{
			Partition:          p.partition,
			CurrentLeaderEpoch: -1,
			FetchOffset:        p.pos,
			LogStartOffset:     -1,
			PartitionMaxBytes:  f.cfg.PartitionMaxBytes,
		})
	}
	for _, t := range msg.req.Topics { // entries in the order of the request
		for _, rp := range t.Partitions {
			p := f.parts[tp{t.Topic, rp.Partition}]
			req.entries = append(req.entries, entry{p: p, epoch: p.epoch, offset: rp.FetchOffset, expansion: f.expansion})
			p.inflight = true
			p.fetches++
		}
	}
	b := f.broker(id)
	b.inflight++
	if longPoll {
		b.longPoll = true
	}
	f.reserved += reserve
	f.stats.Requests++
	f.stats.PartitionFetches += int64(len(parts))
	f.stats.MemoryPeak = max(f.stats.MemoryPeak, f.used+f.reserved)
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		rctx, cancel := context.WithTimeout(ctx, f.cfg.MaxWait+f.cfg.RequestTimeout)
		res, err := f.transport.RoundTrip(rctx, f.addr.Addr, msg)
		cancel()
		var fr *fetchResp
		if err == nil {
			if fr, _ = res.(*fetchResp); fr == nil {
				err = fmt.Errorf("fetch: unexpected response %T", res)
			}
		}
		f.mu.Lock()
		f.complete(ctx, req, fr, err)
		f.mu.Unlock()
		f.kick()
	}()
}

// complete files the response of req. Called with f.mu held.
func (f *Fetcher) complete(ctx context.Context, req *request, res *fetchResp, err error) {
	b := f.broker(req.broker)
	b.inflight--
	if req.longPoll {
		b.longPoll = false
	}
	f.reserved -= req.reserve
	now := time.Now()
	if err == nil && res.errorCode != 0 {
		res.release()
		err = kafka.Error(res.errorCode)
	}
	if err != nil {
		for _, e := range req.entries {
			e.p.inflight = false
		}
		if ctx.Err() != nil || f.state == stateStopped {
			return
		}
		f.stats.RequestErrors++
		d := b.backoff.next()
		b.retryAt = now.Add(d)
		// The broker may be down or no longer lead these partitions:
		// find their leaders again.
		for _, e := range req.entries {
			if e.p.leader == req.broker {
				e.p.leader = -1
			}
			e.p.lastErr = err
		}
		if !b.failing || now.Sub(b.warned) > 30*time.Second {
			f.log.Log(context.Background(), f.level(err), "kafka fetch failed; retrying",
				"broker", req.broker, "partitions", len(req.entries), "backoff", d, "err", err)
			b.warned = now
		}
		b.failing = true
		return
	}
	if b.failing {
		f.log.Info("kafka fetch recovered", "broker", req.broker)
		b.failing = false
	}
	b.backoff.reset()
	if res.throttle > 0 {
		// KIP-219: the broker answered at once and expects no request
		// before the throttle time ends (a throttled fetch may list no
		// partition at all)
		f.stats.Throttles++
		b.retryAt = later(b.retryAt, now.Add(res.throttle))
	}
	f.stats.Bytes += res.bytes
	minOne := true // the broker still had to return a first batch whatever its size
	k := 0
	for ti := range res.topics {
		t := &res.topics[ti]
		for pi := range t.partitions {
			rp := &t.partitions[pi]
			eligible := minOne
			if len(rp.records) > 0 {
				minOne = false
			}
			e := req.find(t.topic, rp.partition, &k)
			if e == nil || e.seen {
				putBuf(rp.records)
				continue
			}
			e.seen = true
			f.partitionDone(e, rp, eligible, now)
		}
	}
	for i := range req.entries {
		if e := &req.entries[i]; !e.seen {
			// left out of the response (a broker may stop listing
			// partitions once the byte limit is used): first next time
			e.p.inflight = false
			if e.p.epoch == e.epoch && !e.p.atTail(f.cfg.Isolation) {
				e.p.starved = true
			}
		}
	}
}

// partitionDone files one partition of a response. eligible says the broker
// read it while no partition before it had returned data, so it would have
// returned at least one batch had there been one below its bound. Called
// with f.mu held.
func (f *Fetcher) partitionDone(e *entry, rp *respPartition, eligible bool, now time.Time) {
	p := e.p
	p.inflight = false
	if p.closed || p.epoch != e.epoch || f.state == stateStopped {
		putBuf(rp.records) // the caller moved (SetOffset, Pause): not wanted
		return
	}
	if rp.errorCode != 0 {
		putBuf(rp.records)
		kerr := kafka.Error(rp.errorCode)
		if retriable(rp.errorCode) {
			f.stats.PartitionErrors++
			d := p.backoff.next()
			p.retryAt = now.Add(d)
			p.leader = -1 // find the leader again
			if !errors.Is(p.lastErr, kerr) {
				f.log.Warn("kafka fetch: partition error; retrying", "topic", p.topic, "partition", p.partition,
					"offset", e.offset, "backoff", d, "err", kerr)
			}
			p.lastErr = kerr
			return
		}
		p.failed = true
		p.deliver(&Result{
			Topic: p.topic, Partition: int(p.partition), Offset: e.offset, Next: e.offset,
			HighWatermark: rp.hwm, LastStableOffset: rp.lso, LogStartOffset: rp.logStart,
			Err: &PartitionError{Topic: p.topic, Partition: int(p.partition), Offset: e.offset, Err: kerr},
		})
		return
	}
	p.hwm, p.lso, p.logStart = rp.hwm, rp.lso, rp.logStart
	p.backoff.reset()
	p.lastErr = nil

	var out scanOut
	if rp.redirected {
		// The broker skipped the read and names another replica: this
		// says nothing about what the partition holds. kfetch sends no
		// rack ID, so a broker with a rack-aware selector never does
		// this; a custom selector may. Ask the leader again, later.
		putBuf(rp.records)
		rp.records = nil
		f.stats.Redirects++
		if p.emptyBackoff.d == 0 {
			f.log.Warn("kafka fetch: the leader named a preferred read replica and returned nothing; kfetch reads from leaders only and asks again",
				"topic", p.topic, "partition", p.partition, "offset", e.offset, "replica", rp.replica)
		}
		f.emptyAnswer(p, now)
		return
	}
	scan(rp.records, e.offset, f.cfg.Isolation == ReadCommitted, rp.aborted, &out)
	f.stats.AbortedRecords += out.aborted
	f.stats.ControlBatches += int64(out.control)
	// The position moves only past batches seen. An answer with nothing
	// below the partition's bound does not mean the range holds nothing:
	// Kafka answers so while records exist (a tiered-storage read not
	// done within remote.fetch.max.wait.ms, a remote fetch quota, a
	// preferred read replica). Such a partition is asked again after a
	// backoff that grows while the answers stay empty.
	if out.err == nil && out.next == e.offset {
		putBuf(rp.records)
		rp.records = nil
		bound := p.bound(f.cfg.Isolation)
		switch {
		case out.partial && eligible:
			// Kafka returns a first batch whole, however large, and
			// replaces an incomplete one by nothing (KIP-74): a cut
			// batch with nothing before it cannot be read at all.
			out.err = corrupt(e.offset, "the broker returned only part of a batch, with nothing before it")
		case !eligible && bound > e.offset:
			p.starved = true // the request's byte limit ran out first
			return
		case bound > e.offset || len(rp.records) > 0:
			f.emptyAnswer(p, now)
			return
		default:
			p.emptyBackoff.reset() // at its bound: the next fetch is a long poll
			p.empties = 0
			return
		}
	}
	p.emptyBackoff.reset()
	p.empties = 0
	p.starved = false
	r := &Result{
		Topic: p.topic, Partition: int(p.partition), Offset: e.offset, Next: out.next,
		HighWatermark: rp.hwm, LastStableOffset: rp.lso, LogStartOffset: rp.logStart,
		Bytes: len(rp.records), Aborted: out.aborted, Control: out.control,
		f: f, p: p,
		cur: cursor{topic: p.topic, partition: int(p.partition), from: e.offset, batches: out.batches,
			intern: &p.intern, last: e.offset - 1, maxBatch: int(f.cfg.BatchMaxBytes)},
	}
	if len(out.batches) > 0 {
		// the set, and what decoding it is expected to take: the
		// request reserved as much
		r.set = rp.records
		r.spare = int64(float64(len(rp.records)) * (e.expansion - 1))
		r.charged = int64(cap(rp.records)) + r.spare
		f.used += r.charged
		f.stats.MemoryPeak = max(f.stats.MemoryPeak, f.used+f.reserved)
	} else {
		putBuf(rp.records)
	}
	if out.err != nil {
		r.Err = &PartitionError{Topic: p.topic, Partition: int(p.partition), Offset: e.offset, Err: out.err}
		p.failed = true
	}
	p.deliver(r)
}

// emptyAnswer schedules the next fetch of p after an answer that brought
// nothing although the partition's bound is above its position: 20ms,
// doubling while the answers stay empty, at most MaxWait (or 100ms), so a
// partition the broker keeps answering so costs no more than one at its
// log end. Called with f.mu held.
func (f *Fetcher) emptyAnswer(p *Partition, now time.Time) {
	f.stats.EmptyAnswers++
	d := p.emptyBackoff.step(20*time.Millisecond, max(f.cfg.MaxWait, 100*time.Millisecond))
	p.retryAt = now.Add(d)
	p.starved = false
	if p.empties++; p.empties == 10 {
		// a few seconds of it: say so, once, and in State
		f.log.Warn("kafka fetch: the broker keeps answering no records below the partition's bound; asking again",
			"topic", p.topic, "partition", p.partition, "offset", p.pos, "last_stable_offset", p.lso, "high_watermark", p.hwm)
	}
	if p.empties >= 10 {
		p.lastErr = ErrNoData
	}
}

// refreshMetadata asks for the leaders of topics. Called with f.mu held.
func (f *Fetcher) refreshMetadata(ctx context.Context, topics []string) {
	f.meta.inFlight = true
	f.stats.MetadataRequests++
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		rctx, cancel := context.WithTimeout(ctx, f.cfg.RequestTimeout)
		res, err := f.transport.RoundTrip(rctx, f.addr.Addr, &metaMsg{clientID: f.cfg.ClientID, req: meta.Request{TopicNames: topics}})
		cancel()
		var mr *metaResp
		if err == nil {
			if mr, _ = res.(*metaResp); mr == nil {
				err = fmt.Errorf("metadata: unexpected response %T", res)
			}
		}
		f.mu.Lock()
		f.metadataDone(ctx, topics, mr, err)
		f.mu.Unlock()
		f.kick()
	}()
}

// metadataDone files the leaders found. Called with f.mu held.
func (f *Fetcher) metadataDone(ctx context.Context, topics []string, res *metaResp, err error) {
	f.meta.inFlight = false
	now := time.Now()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		f.stats.MetadataErrors++
		for _, p := range f.order {
			if p.leader < 0 && containsString(topics, p.topic) {
				p.lastErr = err // e.g. SASL authentication failed: visible in State
			}
		}
		d := f.meta.backoff.next()
		f.meta.retryAt = now.Add(d)
		if now.Sub(f.meta.warned) > 30*time.Second {
			f.log.Log(context.Background(), f.level(err), "kafka metadata request failed; retrying",
				"topics", topics, "backoff", d, "err", err)
			f.meta.warned = now
		}
		return
	}
	leaders := make(map[tp]int32)
	problems := make(map[string]error)
	for _, t := range res.res.Topics {
		if t.ErrorCode != 0 {
			problems[t.Name] = kafka.Error(t.ErrorCode)
			continue
		}
		problems[t.Name] = kafka.LeaderNotAvailable
		if len(t.Partitions) == 0 {
			problems[t.Name] = kafka.UnknownTopicOrPartition
		}
		for _, p := range t.Partitions {
			if p.ErrorCode == 0 && p.LeaderID >= 0 {
				leaders[tp{t.Name, p.PartitionIndex}] = p.LeaderID
			}
		}
	}
	missing := 0
	for _, p := range f.order {
		if p.closed || !containsString(topics, p.topic) {
			continue
		}
		if l, ok := leaders[tp{p.topic, p.partition}]; ok {
			p.leader = l
			continue
		}
		if p.leader < 0 {
			missing++
			p.lastErr = problems[p.topic]
			if p.lastErr == nil || p.lastErr == kafka.LeaderNotAvailable && !hasPartition(res.res, p.topic, p.partition) {
				p.lastErr = kafka.UnknownTopicOrPartition // the topic has no such partition
			}
		}
	}
	if missing == 0 {
		f.meta.backoff.reset()
		return
	}
	d := f.meta.backoff.next()
	f.meta.retryAt = now.Add(d)
	if now.Sub(f.meta.warned) > 30*time.Second {
		f.log.Warn("kafka metadata: partitions without a leader; retrying", "partitions", missing, "backoff", d, "topic_errors", fmt.Sprint(problems))
		f.meta.warned = now
	}
}

// level is Error for failures an operator must fix (credentials, ACLs, an
// old broker), Warn for the others.
func (f *Fetcher) level(err error) slog.Level {
	if isAuthError(err) || errors.Is(err, ErrBrokerTooOld) {
		return slog.LevelError
	}
	return slog.LevelWarn
}

// isAuthError reports an authentication or authorization failure.
func isAuthError(err error) bool {
	for _, e := range []kafka.Error{kafka.SASLAuthenticationFailed, kafka.TopicAuthorizationFailed,
		kafka.GroupAuthorizationFailed, kafka.ClusterAuthorizationFailed, kafka.IllegalSASLState,
		kafka.UnsupportedSASLMechanism} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func hasPartition(res *meta.Response, topic string, partition int32) bool {
	for _, t := range res.Topics {
		if t.Name == topic {
			for _, p := range t.Partitions {
				if p.PartitionIndex == partition {
					return true
				}
			}
		}
	}
	return false
}

// backoff doubles from 100ms to 5s (next), or from lo to hi (step).
type backoff struct{ d time.Duration }

func (b *backoff) next() time.Duration { return b.step(100*time.Millisecond, 5*time.Second) }

func (b *backoff) step(lo, hi time.Duration) time.Duration {
	if b.d == 0 {
		b.d = lo
	}
	d := min(b.d, hi)
	b.d = min(2*b.d, hi)
	return d
}

func (b *backoff) reset() { b.d = 0 }
