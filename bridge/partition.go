package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/internal/kfetch"
	"github.com/kbridge/kbridge/internal/wire"
	"github.com/kbridge/kbridge/tracker"
)

// partition bridges one assigned partition for one generation. Its state is
// owned by its goroutine.
type partition struct {
	in     *Ingest
	t      tp
	stream stream
	c      *committer
	log    *slog.Logger

	assigned int64 // committed offset at assignment (kafka-go gives -1/-2 for none)
	tr       *tracker.Partition
	next     int64 // next offset to fetch
	logEnd   int64
	backlog  int64 // exact after an observation, estimated after appends
	paused   bool
	stalled  string // why the partition stopped (topic recreated, a stray entry), "" if not
	// stallCause is StallTopicRecreated, StallBeyondLogEnd,
	// StallStrayEntry or StallBatchTooLarge while stalled.
	stallCause string
	// topicID is the topic ID the stream's records were checked to belong
	// to (zero: not checked, or unknown).
	topicID topicID
	// stray: the stall is an entry another program wrote into the stream;
	// it lifts by itself once the entry is gone (docs/operations.md).
	stray    bool
	lastTrim int64
	observed time.Time
	snap     snapshot

	// kp is the partition in the ingest's fetcher. fetchPos is where its
	// next result starts: equal to next between results, except after
	// something moved next (a loss, an error, a cap reached mid-result),
	// which syncFetch then tells the fetcher (SetOffset).
	kp          *kfetch.Partition
	fetchPos    int64
	fetchPaused bool
	retryAt     time.Time // no fetching before it (backoff after an error)
	backoff     *backoff
	// quiet: the last snapshot found nothing that could change — every
	// entry acknowledged and committed, nothing to trim, no loss, no
	// stray, not paused — and dirty: appended (or skipped) since. A quiet,
	// clean partition is not read at a tick before IdleCheckInterval.
	quiet, dirty bool
}

func (in *Ingest) newPartition(topic string, id int, committed int64, c *committer) *partition {
	key := wire.StreamKey(in.cfg.Prefix, topic, id)
	return &partition{
		in: in, t: tp{topic, id}, c: c, assigned: committed, logEnd: -1, lastTrim: tracker.None,
		stream: stream{rdb: in.cfg.Redis, key: key, registry: wire.RegistryKey(in.cfg.Prefix),
			groups: in.cfg.WorkerGroups, batchSize: in.cfg.AppendBatch, multi: &in.appendMulti},
		log: in.log.With("topic", topic, "partition", id, "stream", key),
	}
}

// run bridges the partition until the generation ends (ctx done), then
// observes once more for the final commit. It never returns before ctx is
// done: in kafka-go an early return would end the whole generation.
func (p *partition) run(ctx context.Context) {
	defer p.in.parts.remove(p.stream.key, p)
	defer p.in.dlq.unregister(p)
	if err := p.setup(ctx); err != nil {
		<-ctx.Done()
		return
	}
	if err := p.startFetching(ctx); err != nil {
		<-ctx.Done()
		return
	}
	p.c.join()
	p.loop(ctx)
	p.c.leave()
	p.kp.Close() // stop fetching first: what is fetched ahead is dropped
	p.final()
}

// startFetching adds the partition to the ingest's fetcher at p.next. The
// previous generation's partitions were closed before this one started —
// except after a change of the topics to bridge, when the group left may
// still be ending (Ingest.leave waits for it a bounded time): Add refuses a
// partition still fetched, and is retried until it is closed.
func (p *partition) startFetching(ctx context.Context) error {
	f := p.in.fetcher.Load()
	p.backoff = newBackoff()
	return retry(ctx, p.log, "kafka fetcher", func() error {
		kp, err := f.Add(p.t.topic, p.t.partition, p.next)
		if err != nil {
			return err
		}
		p.kp, p.fetchPos = kp, p.next
		return nil
	})
}

// loop fetches and appends until ctx is done. The partition's goroutine
// owns its state; it waits on three things: a fetched result (the fetcher
// fetches the next one while this one is appended), the committer's tick
// (observe and report, so commits follow acknowledgements within one
// interval whatever the fetch is waiting for), and — paused, stalled or
// backing off — a timer.
func (p *partition) loop(ctx context.Context) {
	tick, seq := p.c.next()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for ctx.Err() == nil {
		select {
		case <-tick:
			p.onTick(ctx, seq)
			tick, seq = p.c.next()
			continue
		default:
		}
		if (p.paused || p.stalled != "") && time.Since(p.observed) >= p.in.cfg.PausedPollInterval {
			p.observe(ctx)
		}
		stopped := p.stalled != "" || p.updatePaused()
		wait := p.in.cfg.PausedPollInterval
		if d := time.Until(p.retryAt); d > 0 {
			stopped, wait = true, min(wait, d)
		}
		p.syncFetch(stopped)
		var ready <-chan struct{}
		if !stopped {
			r, err := p.kp.Poll()
			if r != nil {
				p.handle(ctx, r)
				continue
			}
			if err != nil { // the fetcher stopped: the ingest is shutting down
				<-ctx.Done()
				break
			}
			ready, wait = p.kp.Ready(), time.Hour
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
		case <-tick: // handled at the top
		case <-ready:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// onTick observes the stream for the committer's tick seq, unless nothing
// can have changed since the last snapshot (see quiet), and reports. A
// paused or stalled partition is observed every PausedPollInterval instead
// (see loop), as often as before the tick came in: a tick adds nothing.
func (p *partition) onTick(ctx context.Context, seq uint64) {
	switch {
	case p.paused || p.stalled != "":
	case !p.quiet || p.dirty || time.Since(p.observed) >= p.in.cfg.IdleCheckInterval():
		p.observe(ctx)
	}
	p.c.report(seq)
}

// syncFetch tells the fetcher what the partition's state says: stopped
// (paused, stalled, backing off) holds no fetched data; a position moved
// outside the flow of results is fetched from.
func (p *partition) syncFetch(stopped bool) {
	if stopped && !p.fetchPaused {
		p.kp.Pause()
		p.fetchPaused = true
	}
	if p.fetchPos != p.next {
		if err := p.kp.SetOffset(p.next); err != nil {
			p.log.Error("cannot fetch from offset", "offset", p.next, "err", err)
		}
		p.fetchPos = p.next
	}
	if !stopped && p.fetchPaused {
		p.kp.Resume()
		p.fetchPaused = false
	}
}

// appendChunks × AppendBatch is the most records one Read hands to one
// append: the script calls of a chunk (AppendBatch records each) go in one
// pipelined round trip.
const appendChunks = 8

// handle appends the records of one fetched result, at most the room left
// under the caps, and then tells the tracker that the rest of the result's
// range holds nothing to deliver (transaction markers, aborted records,
// compacted gaps), so a fully acknowledged partition commits its log end.
// Anything that stops it midway (a cap, an error, a loss) leaves next at
// the first record not appended, and the fetcher is set back there.
func (p *partition) handle(ctx context.Context, r *kfetch.Result) {
	defer r.Release()
	p.fetchPos = r.Next
	if r.HighWatermark >= 0 {
		p.logEnd = r.HighWatermark
		p.tr.SetLogEnd(r.HighWatermark)
	}
	if r.Offset != p.next {
		// cannot happen: the fetcher fetches from where it was told
		p.log.Error("fetched result does not start at the position; fetching again", "offset", r.Offset, "position", p.next)
		p.fetchPos = -1
		return
	}
	chunk := int64(appendChunks * p.in.cfg.AppendBatch)
	for {
		room := p.room()
		if room <= 0 {
			// a cap is reached: the rest is fetched again once there is
			// room (updatePaused pauses; a global cap that others' room
			// fills is polled)
			p.in.parts.set(p, p.status())
			p.fetchPos = -1
			if !p.updatePaused() {
				p.retryAt = time.Now().Add(p.in.cfg.PausedPollInterval)
			}
			return
		}
		recs, err := r.Read(int(min(room, chunk)))
		if len(recs) > 0 {
			p.in.counters.fetched.Add(int64(len(recs)))
			ok, aerr := p.append(ctx, recs)
			p.in.parts.set(p, p.status()) // the room reserved, back to what was appended
			if aerr != nil {
				p.fetchPos = -1
				if ctx.Err() == nil {
					// Back to the loop, not a retry in place: observing,
					// committing and trimming go on meanwhile, so a Redis
					// that is full frees the memory the workers acked.
					d := p.backoff.next()
					p.retryAt = time.Now().Add(d)
					p.log.Warn("append failed; retrying", "offset", p.next, "backoff", d, "err", aerr)
				}
				return
			}
			if !ok || p.stalled != "" {
				p.fetchPos = -1 // a loss or a stray top: observe moved next, or stalled
				return
			}
		}
		if err != nil { // a record that cannot be decoded: r.Next moved back to it
			p.fetchError(ctx, r.Err)
			return
		}
		if len(recs) == 0 {
			break
		}
	}
	if r.Err != nil { // the records before the error are in; the rest is fetched again
		p.fetchError(ctx, r.Err)
		return
	}
	if r.Next > p.next {
		p.tr.Skipped(p.next, r.Next)
		p.next = r.Next
		p.dirty = true
	}
	p.backoff.reset()
}

// fetchError handles a result that ended with an error the fetcher does not
// retry by itself (it retries leader moves, unreachable brokers and the
// like): an offset out of range, an unreadable batch, an authorization
// failure. The fetcher stopped the partition at next; it is fetched again
// after a backoff.
func (p *partition) fetchError(ctx context.Context, err error) {
	p.fetchPos = -1
	p.in.counters.kafkaErrs.Add(1)
	if errors.Is(err, kafka.OffsetOutOfRange) {
		if err = p.outOfRange(ctx); err == nil {
			return // next moved to the log start, or the partition stalled
		}
	}
	if errors.Is(err, kafka.UnknownTopicOrPartition) {
		p.in.confirmTopics(ctx) // the first sign the topic is gone (topics.go)
	}
	d := p.backoff.next()
	p.retryAt = time.Now().Add(d)
	var ce *kfetch.CorruptError
	if errors.As(err, &ce) && ce.TooLarge {
		p.stallTooLarge(ce)
		return
	}
	if errors.As(err, &ce) || isAuthError(err) {
		p.log.Error("fetch failed; retrying", "offset", p.next, "backoff", d, "err", err)
		return
	}
	p.log.Warn("fetch failed; retrying", "offset", p.next, "backoff", d, "err", err)
}

func isAuthError(err error) bool {
	for _, e := range []kafka.Error{kafka.TopicAuthorizationFailed, kafka.GroupAuthorizationFailed,
		kafka.ClusterAuthorizationFailed, kafka.SASLAuthenticationFailed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// backoff doubles from 100ms to 5s.
type backoff struct{ d time.Duration }

func newBackoff() *backoff { return &backoff{d: 100 * time.Millisecond} }

func (b *backoff) next() time.Duration {
	d := b.d
	b.d = min(2*b.d, 5*time.Second)
	return d
}

func (b *backoff) reset() { b.d = 100 * time.Millisecond }

// setup creates the worker groups, reads the stream and chooses where to
// fetch from: max(committed, top+1), retrying while Redis or Kafka is down.
func (p *partition) setup(ctx context.Context) error {
	err := retry(ctx, p.log, "redis", func() error {
		if err := p.stream.ensure(ctx); err != nil {
			p.in.counters.redisErrs.Add(1)
			return err
		}
		var err error
		p.snap, err = p.stream.observe(ctx)
		if err != nil {
			p.in.counters.redisErrs.Add(1)
		}
		return err
	})
	if err != nil {
		return err
	}
	committed := p.assigned
	if committed < 0 {
		committed = tracker.None
	}
	p.tr = tracker.NewPartition(committed, p.snap.Top)
	// A stream (or a commit) beyond the log end means the topic was
	// recreated or truncated: nothing of it may be committed to the new log.
	err = retry(ctx, p.log, "kafka", func() error {
		var err error
		p.logEnd, err = p.listOffset(ctx, kafka.LastOffset)
		return err
	})
	if err != nil {
		return err
	}
	p.tr.SetLogEnd(p.logEnd)
	// Found at assignment, a top that cannot be a record (another program's
	// XADD) would be taken for this group's own progress: the tracker goes
	// back to the highest record below it (Found).
	stray := p.tr.Found(p.snap.Observation)
	switch {
	case p.checkTopicID(ctx, true):
		// the stream holds another topic's records (topicid.go)
	case committed > p.logEnd:
		p.stall(committed, p.logEnd)
	case stray != tracker.NotStray:
		p.stallStray(p.snap.Top, stray)
	}
	if err := p.restart(ctx); err != nil {
		return err
	}
	p.in.dlq.register(p) // its dead letters go to Kafka (dlqexport.go)
	// What the stream already holds counts against the caps from the start
	// (a restart or a hand-over finds a full stream). The frontier — or,
	// with nothing in the stream and no commit, the start offset just
	// resolved — is offered for commit at once, so that the group's
	// position is in Kafka before Redis can lose it.
	d := p.tr.Observe(p.snap.Observation)
	p.backlog = d.Backlog
	if d.ShouldCommit && p.stalled == "" {
		p.offerCommit(ctx, p.snap.Top, d.Commit) // not past a dead letter Kafka lacks (dlqexport.go)
	}
	p.in.parts.set(p, p.status())
	p.observed = time.Now()
	p.log.Info("partition assigned", "committed", committed, "top", p.snap.Top, "offset", p.next)
	return nil
}

// restart sets the fetch position from the tracker (at assignment and after
// a loss), resolving the configured start offset only when neither a commit,
// the stream's top nor an earlier resolution says where to start.
func (p *partition) restart(ctx context.Context) error {
	return retry(ctx, p.log, "kafka", func() error {
		next, err := p.tr.Position(func() (int64, error) {
			return p.listOffset(ctx, p.in.cfg.startOffset())
		})
		if err == nil {
			p.next = next
		}
		return err
	})
}

func (p *partition) listOffset(ctx context.Context, which int64) (int64, error) {
	res, err := p.in.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{
		Topics: map[string][]kafka.OffsetRequest{p.t.topic: {{Partition: p.t.partition, Timestamp: which}}},
	})
	if err != nil {
		return 0, err
	}
	for _, o := range res.Topics[p.t.topic] {
		if o.Partition == p.t.partition {
			if o.Error != nil {
				return 0, o.Error
			}
			if which == kafka.FirstOffset {
				return o.FirstOffset, nil
			}
			return o.LastOffset, nil
		}
	}
	return 0, fmt.Errorf("list offsets: no answer for %s/%d", p.t.topic, p.t.partition)
}

// observe reads the stream, offers the frontier for commit, trims below what
// was committed, and publishes the status. Any Redis error means no commit.
func (p *partition) observe(ctx context.Context) {
	snap, err := p.stream.observe(ctx)
	if err != nil {
		if ctx.Err() == nil {
			p.in.counters.redisErrs.Add(1)
			p.log.Warn("redis unavailable; not committing", "err", err)
		}
		return
	}
	p.in.counters.observations.Add(1)
	p.observed = time.Now()
	p.snap = snap
	p.dirty, p.quiet = false, false
	if p.checkTopicID(ctx, false) {
		// Recreated topic: nothing of the stream counts for the new
		// topic. Once an operator deleted the stream, start afresh.
		if !snap.Exists || snap.Top == tracker.None {
			if err := p.restartFresh(ctx); err != nil && ctx.Err() == nil {
				p.log.Warn("starting afresh failed; will try again", "err", err)
			}
			p.fetchPos = -1 // fetch from the new position, nothing of before
			return
		}
		st := p.status()
		p.in.parts.set(p, st)
		if err := p.stream.publish(ctx, p.in.cfg.StatusTTL, st); err != nil && ctx.Err() == nil {
			p.log.Warn("publish status failed", "err", err)
		}
		return
	}
	if off, ok := p.c.committed(p.t); ok {
		p.tr.MarkCommitted(off)
	}
	if p.kp != nil {
		// the log end as the fetcher last saw it: at the tail no result
		// comes to tell it (in read_committed it may pass the last
		// stable offset while a transaction is open)
		if st := p.kp.State(); st.HighWatermark >= 0 {
			p.logEnd = st.HighWatermark
			p.tr.SetLogEnd(st.HighWatermark)
		}
	}
	d := p.tr.Observe(snap.Observation)
	if d.Lost {
		p.recover(ctx, d)
		return
	}
	if d.RecreateGroups {
		p.log.Warn("a worker group is missing on the stream; recreating it at 0 (its entries are delivered again)")
		if err := p.stream.ensure(ctx); err != nil {
			p.log.Warn("recreate groups failed", "err", err)
		}
	}
	p.backlog = d.Backlog
	p.checkStray(ctx, d.Stray)
	if d.ShouldCommit && p.stalled == "" {
		p.offerCommit(ctx, snap.Top, d.Commit) // not past a dead letter Kafka lacks (dlqexport.go)
	}
	trimmed := true
	if tp := p.tr.TrimPoint(); tp != tracker.None && tp > p.lastTrim && p.stalled == "" {
		n, err := p.stream.trim(ctx, tp)
		if err != nil {
			trimmed = false
			if ctx.Err() == nil {
				p.log.Warn("trim failed; will trim at the next commit", "err", err)
			}
		} else {
			p.lastTrim = tp
			p.in.counters.trimmed.Add(n)
		}
	}
	// Nothing can change until something is appended, a worker group
	// appears or Redis loses the stream (seen within IdleCheckInterval):
	// no entry waits for an ack, the commit is where the frontier is, the
	// trim is done.
	p.quiet = trimmed && d.Backlog == 0 && !d.ShouldCommit && !d.RecreateGroups && !d.Ahead &&
		!p.paused && p.stalled == "" && p.tr.Committed() != tracker.None
	st := p.status()
	p.in.parts.set(p, st)
	if err := p.stream.publish(ctx, p.in.cfg.StatusTTL, st); err != nil && ctx.Err() == nil {
		p.log.Warn("publish status failed", "err", err)
	}
}

// recover handles Redis having lost writes (invariant 5): recreate the groups
// at 0 and fetch again from max(committed, top+1). Workers see the lost
// records again (duplicates), none is skipped.
func (p *partition) recover(ctx context.Context, d tracker.Decision) {
	p.in.counters.losses.Add(1)
	p.log.Error("redis lost writes: the stream is gone or behind what was appended; recreating the worker groups and fetching again",
		"appended", p.tr.Appended(), "top", p.snap.Top, "offset", d.Rewind)
	err := retry(ctx, p.log, "redis", func() error {
		if err := p.stream.ensure(ctx); err != nil {
			return err
		}
		var err error
		p.snap, err = p.stream.observe(ctx)
		return err
	})
	if err != nil {
		return
	}
	p.tr.Reset(p.snap.Top)
	p.backlog = 0
	if st := p.tr.Found(p.snap.Observation); st != tracker.NotStray {
		p.stallStray(p.snap.Top, st)
	} else if p.stray {
		// The stray entry was removed by resetting the stream's top (the
		// runbook): what this ingest appended above it is fetched again;
		// ensure set the groups back.
		p.unstall()
	} else if p.stallCause == StallBatchTooLarge {
		// the records lost below the batch are fetched again; the fetch
		// stalls again when it reaches the batch
		p.log.Warn("fetching the lost records again up to the record batch too large to decompress", "was", p.stalled)
		p.stalled, p.stallCause = "", ""
	}
	_ = p.restart(ctx)
	p.dirty = true // observe again at the next tick
}

// updatePaused applies backpressure (invariant 7) with hysteresis: pause at
// the cap, resume at or below the low watermark; the same over all
// partitions with the global cap. It reports whether the partition is
// paused.
//
// The stream's length (XLEN) is capped too, at twice the cap, resuming at
// or below cap + low watermark: entries are trimmed only once committed, so
// while commits fail (a coordinator outage, a partition Kafka refuses) the
// workers' acknowledgements lower the backlog but not the length, and the
// stream would grow until Redis is out of memory (issue 7 point 5).
func (p *partition) updatePaused() bool {
	cfg := p.in.cfg
	global := int64(0)
	if cfg.GlobalCap > 0 {
		global = p.in.parts.backlog()
	}
	length := p.length()
	if p.paused {
		if p.backlog <= cfg.LowWatermark && length <= cfg.PartitionCap+cfg.LowWatermark &&
			(cfg.GlobalCap == 0 || global <= cfg.GlobalLowWatermark) {
			p.paused = false
			p.log.Info("partition resumed", "backlog", p.backlog, "length", length, "global_backlog", global)
			p.publishPaused()
		}
	} else if p.backlog >= cfg.PartitionCap || length >= 2*cfg.PartitionCap || (cfg.GlobalCap > 0 && global >= cfg.GlobalCap) {
		p.paused = true
		p.in.counters.pauses.Add(1)
		why := "stream full"
		if p.backlog < cfg.PartitionCap && length >= 2*cfg.PartitionCap {
			why = "stream not trimmed (are commits failing?)"
		}
		p.log.Info("partition paused: "+why, "backlog", p.backlog, "length", length, "cap", cfg.PartitionCap, "global_backlog", global)
		p.publishPaused()
	}
	return p.paused
}

// length estimates the stream's length now: XLEN at the last observation,
// plus the offsets appended since (more than the entries when Kafka's
// offsets have gaps: backpressure errs on the safe side).
func (p *partition) length() int64 {
	return p.snap.Length + max(0, p.tr.Appended()-max(p.snap.Top, tracker.None))
}

func (p *partition) publishPaused() {
	st := p.status()
	p.in.parts.set(p, st)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = p.stream.publish(ctx, p.in.cfg.StatusTTL, st)
}

// room is how many more records may be appended before a cap is reached
// (the backlog's, the length's: see updatePaused); under a global cap the
// room is reserved at once (see registry.reserve).
func (p *partition) room() int64 {
	cfg := p.in.cfg
	r := max(0, min(cfg.PartitionCap-p.backlog, 2*cfg.PartitionCap-p.length()))
	if cfg.GlobalCap > 0 {
		r = p.in.parts.reserve(p, p.stream.key, r, cfg.GlobalCap)
	}
	return r
}

// outOfRange handles a fetch offset Kafka says is out of range. Below the
// log start the records are gone to retention: say so loudly and go on from
// the log start. Above the log end while the stream holds offsets at or
// above it, the topic was recreated or its log truncated: going on would
// skip the new records as duplicates of the old ones and commit old offsets
// to the new log, so the partition stalls until an operator resets it
// (runbook in docs/operations.md). Between the two, the offset is in the log
// as far as the brokers now say: the answer came from a replica behind, or
// before a leader change settled — not retention loss; the fetch is retried
// at the same offset.
func (p *partition) outOfRange(ctx context.Context) error {
	first, err := p.listOffset(ctx, kafka.FirstOffset)
	if err != nil {
		return err
	}
	last, err := p.listOffset(ctx, kafka.LastOffset)
	if err != nil {
		return err
	}
	switch {
	case p.next > last:
		p.stall(p.next, last)
		return nil
	case p.next >= first:
		return fmt.Errorf("offset %d out of range, yet within the log [%d, %d) (a leader change, a replica behind?): fetching it again", p.next, first, last)
	}
	p.log.Error("fetch offset below the log start: records were deleted by Kafka retention before they were bridged",
		"offset", p.next, "log_start", first, "log_end", last, "resume_at", first)
	p.next = first
	return nil
}

// stall stops the partition for good: the stream or the commit is beyond the
// log end, so the topic was recreated or its log truncated.
func (p *partition) stall(offset, logEnd int64) {
	p.stalled = fmt.Sprintf("offset %d is above the log end %d (stream top %d, committed %d): the topic was recreated or its log truncated; not fetching nor committing until the stream and the group's offsets are reset",
		offset, logEnd, p.tr.Appended(), p.tr.Committed())
	p.stallCause, p.stray = StallBeyondLogEnd, false
	p.log.Error("partition stalled: "+p.stalled, "offset", offset, "log_end", logEnd)
}

// stallTooLarge stops the partition at a record batch that decompresses
// beyond --fetch-batch-max-bytes: fetching it again would fail the same way
// for ever. The records below it are in the stream; a restart with a higher
// limit goes on from it (docs/operations.md, "A stalled partition").
func (p *partition) stallTooLarge(ce *kfetch.CorruptError) {
	p.stalled = fmt.Sprintf("the record batch at offset %d (%d bytes compressed) decompresses to more than %d bytes, the most one batch may take: not fetching nor committing beyond it until the ingest is restarted with a higher --fetch-batch-max-bytes (docs/operations.md, \"A stalled partition\")",
		ce.Offset, ce.Compressed, ce.Limit)
	p.stallCause, p.stray = StallBatchTooLarge, false
	p.retryAt = time.Time{}
	p.log.Error("partition stalled: "+p.stalled, "offset", ce.Offset, "compressed_bytes", ce.Compressed, "limit_bytes", ce.Limit)
}

// stallStray stops fetching and committing the partition while its stream's
// top is an entry that cannot be a record (tracker.Partition.Stray): not
// written by kbridge (another program's XADD), deleted though kbridge never
// removes it, or at or above the log end. Appending would skip the
// partition's next records as duplicates of it, and the commit would follow
// it past records nobody processed. It lifts by itself once the entry is gone
// and the stream's top set back (checkStray, recover). The reason names the
// top to set back to: the highest record below the stray (the status top),
// never the stray itself.
func (p *partition) stallStray(top int64, st tracker.Stray) {
	mine := p.tr.Appended()
	back := "back below it"
	if mine != tracker.None {
		back = "back to " + wire.EntryID(mine) // the highest record below it, never the stray
	}
	var reason string
	switch st {
	case tracker.StrayForeign:
		reason = fmt.Sprintf("stream top %d is above what this ingest appended (%d): entry %s was not written by kbridge (it is not a record of %s/%d), another program wrote into the stream; not fetching nor committing until it is removed: XDEL it, then XSETID the stream's top %s (docs/operations.md, \"A stalled partition\")",
			top, mine, wire.EntryID(top), p.t.topic, p.t.partition, back)
	case tracker.StrayDeleted:
		reason = fmt.Sprintf("stream top %d is above what this ingest appended (%d) and its entry %s is gone, though kbridge never deletes an entry above what it appended nor at or above its commit (%d): another program's entry deleted without setting the stream's top back (or the group's offsets were reset below the stream); not fetching nor committing until the stream's top is set back: XSETID it %s (docs/operations.md, \"A stalled partition\")",
			top, mine, wire.EntryID(top), p.tr.Committed(), back)
	default:
		reason = fmt.Sprintf("stream top %d is above what this ingest appended (%d) and above the log end %d: an entry not written by kbridge (another program's XADD into the stream?), or the topic was recreated; not fetching nor committing until it is removed: XDEL it, then XSETID the stream's top %s (docs/operations.md, \"A stalled partition\")",
			top, mine, p.logEnd, back)
	}
	if p.stalled == reason {
		return
	}
	p.stalled, p.stallCause, p.stray = reason, StallStrayEntry, true
	p.log.Error("partition stalled: "+reason, "offset", top, "log_end", p.logEnd)
}

func (p *partition) unstall() {
	p.log.Warn("partition no longer stalled: the entry that was not a record is gone", "was", p.stalled)
	p.stalled, p.stallCause, p.stray = "", "", false
}

// checkStray acts on what the tracker concluded of the stream's top (st): a
// top that cannot be a record stalls the partition; the stall lifts when it
// is gone. The log end is read afresh before blaming a top at or above the
// one last seen (another owner may have appended records the fetch has not
// seen yet). Before the stall lifts every group whose last-delivered-id is
// above the new top is set back to it (ensure): a worker that read the stray
// entry left its group there, and the records appended next, below it, would
// never be delivered to that group — while its frontier let the commit pass
// them.
func (p *partition) checkStray(ctx context.Context, st tracker.Stray) {
	if st == tracker.StrayAboveLogEnd {
		if end, err := p.listOffset(ctx, kafka.LastOffset); err == nil {
			p.logEnd = end
			p.tr.SetLogEnd(end)
			st = p.tr.Stray(p.snap.Observation)
		}
	}
	switch {
	case st != tracker.NotStray:
		// Found: Redis may have lost records before the stray entry was
		// written over them (a restart between two observations): what was
		// appended goes back to the highest record below it, so that the
		// reason and the status top name it and the records above it are
		// fetched again once the stall lifts (found by FuzzPartition).
		st = p.tr.Found(p.snap.Observation)
		p.stallStray(p.snap.Top, st)
	case p.stray:
		// Set back to the stream's top, or to the highest record this
		// ingest knows every group read when another owner appended above
		// it since the operator's XSETID (found by FuzzPartition).
		err := p.stream.ensure(ctx)
		if err == nil {
			err = p.stream.setBack(ctx, p.tr.Appended())
		}
		if err != nil {
			if ctx.Err() == nil {
				p.log.Warn("setting back the groups above the stream's top failed; still stalled", "err", err)
			}
			return
		}
		p.unstall()
		_ = p.restart(ctx) // from max(committed, appended+1): Found may have set it back
	}
}

// append writes recs once and reports whether they are in the stream. An
// error leaves p.next where it was: the records are fetched again and the
// conditional append makes a retry of a batch that did land harmless. A loss
// or a top that cannot be a record appends nothing (ok false): observe
// recovers (next moves) or stalls.
func (p *partition) append(ctx context.Context, recs []wire.Record) (ok bool, err error) {
	res, err := p.stream.append(ctx, p.tr.Appended(), p.logEnd, recs)
	if err != nil {
		p.in.counters.redisErrs.Add(1)
		if redis.HasErrorPrefix(err, "OOM") {
			return false, fmt.Errorf("redis is full (maxmemory with noeviction): appends wait until trims free memory: %w", err)
		}
		return false, err
	}
	if res.lost || res.foreign {
		p.observe(ctx) // sees the loss and recovers, or stalls on the stray top
		return false, nil
	}
	// The records up to the last one are in the stream (appended, or found
	// there): that, not the stream's top, is what this ingest knows.
	last := recs[len(recs)-1].Offset
	p.tr.MarkAppended(last)
	p.in.counters.appended.Add(int64(res.added))
	p.in.counters.dups.Add(int64(len(recs) - res.added))
	p.backlog += int64(res.added)
	p.next = last + 1
	p.dirty = true
	return true, nil
}

// final observes the stream once more after the generation ended, so the
// committer's last commit includes everything acknowledged until now.
func (p *partition) final() {
	ctx, cancel := context.WithTimeout(context.Background(), p.in.cfg.FinalCommitTimeout/2)
	defer cancel()
	snap, err := p.stream.observe(ctx)
	if err != nil {
		p.log.Warn("final observation failed; the next owner commits instead", "err", err)
		return
	}
	if off, ok := p.c.committed(p.t); ok {
		p.tr.MarkCommitted(off)
	}
	if d := p.tr.Observe(snap.Observation); d.ShouldCommit && p.stalled == "" {
		p.offerCommit(ctx, snap.Top, d.Commit) // not past a dead letter Kafka lacks (dlqexport.go)
	}
	p.log.Info("partition revoked", "committed", p.tr.Committed(), "top", snap.Top)
}

func (p *partition) status() PartitionStatus {
	var fetches int64
	if p.kp != nil {
		fetches = p.kp.State().Fetches
	}
	return PartitionStatus{
		Fetches: fetches,
		Topic:   p.t.topic, Partition: p.t.partition, Stream: p.stream.key,
		Committed: p.tr.Committed(), LogEnd: p.logEnd, Top: p.tr.Appended(), Length: p.snap.Length,
		Backlog: p.backlog, Pending: pendingSum(p.snap), Paused: p.paused, Stalled: p.stalled,
		StallCause: p.stallCause, TopicID: p.topicID.String(),
		OldestPending: p.snap.oldest.offset, OldestPendingGroup: p.snap.oldest.group,
		OldestPendingConsumer: p.snap.oldest.consumer, OldestPendingIdle: p.snap.oldest.idle,
		OldestPendingDelivery: p.snap.oldest.deliveries,
		WorkerGroups:          p.in.cfg.WorkerGroups, Owner: p.in.owner, Updated: time.Now(),
	}
}

func pendingSum(s snapshot) int64 {
	var n int64
	for _, g := range s.Groups {
		n += g.Pending
	}
	return n
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
