package bridge

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// committer sets the pace of one generation's observations and commits
// their frontiers together: every CommitInterval it ticks, every partition
// observes its stream (or skips it when nothing can have changed) and
// reports, and once all have reported (or after a short bound) it commits
// what they offered in one request; once more when the generation ends. So
// an offset acknowledged just before a tick is committed right after it:
// commit lag is at most one interval plus one snapshot and one commit, not
// an interval of observation plus an interval of commit.
//
// Each partition's commit succeeds or fails on its own: the request goes
// through kafka.Client.OffsetCommit, whose answer has an error per
// partition, rather than Generation.CommitOffsets, which fails as a whole on
// the first partition's error — so one partition that cannot be committed (a
// deleted topic, a revoked ACL) kept every other partition's commit unknown,
// and so untrimmed, and their streams grew without bound (issue 7 point 5).
// A partition whose commit failed is offered again at the next interval; the
// others are marked committed, and their streams trimmed.
type committer struct {
	in *Ingest
	// commit sends one commit request for the generation: failed holds
	// the partitions the broker refused, err a failure of the whole
	// request (nothing committed).
	commit func(ctx context.Context, offsets map[tp]int64) (failed map[tp]error, err error)
	wg     sync.WaitGroup // the generation's partition functions

	mu   sync.Mutex
	want map[tp]int64 // offered, not yet committed
	done map[tp]int64 // committed in this generation

	tickMu   sync.Mutex
	tick     chan struct{} // closed at the next tick, then replaced
	seq      uint64        // ticks so far
	members  int           // partitions that report at each tick
	reported int           // partitions that reported for tick seq
	allIn    chan struct{} // every member reported for tick seq
}

func (in *Ingest) newCommitter(gen *kafka.Generation) *committer {
	c := &committer{in: in, want: map[tp]int64{}, done: map[tp]int64{},
		tick: make(chan struct{}), allIn: make(chan struct{}, 1)}
	c.commit = func(ctx context.Context, offsets map[tp]int64) (map[tp]error, error) {
		return in.commitOffsets(ctx, gen.GroupID, int(gen.ID), gen.MemberID, offsets)
	}
	return c
}

// commitOffsets commits offsets for a generation of the group, returning the
// partitions the broker refused. A fault injected by a test (commitFault)
// fails its partitions before the request.
func (in *Ingest) commitOffsets(ctx context.Context, group string, generation int, member string, offsets map[tp]int64) (map[tp]error, error) {
	failed := map[tp]error{}
	topics := map[string][]kafka.OffsetCommit{}
	for t, off := range offsets {
		if in.commitFault != nil {
			if err := in.commitFault(t.topic, t.partition); err != nil {
				failed[t] = err
				continue
			}
		}
		topics[t.topic] = append(topics[t.topic], kafka.OffsetCommit{Partition: t.partition, Offset: off})
	}
	if len(topics) == 0 {
		return failed, nil
	}
	res, err := in.client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{
		GroupID: group, GenerationID: generation, MemberID: member, Topics: topics,
	})
	if err != nil {
		return nil, err
	}
	answered := map[tp]bool{}
	for topic, ps := range res.Topics {
		for _, p := range ps {
			t := tp{topic, p.Partition}
			answered[t] = true
			if p.Error != nil {
				failed[t] = p.Error
			}
		}
	}
	for topic, cs := range topics {
		for _, oc := range cs {
			if t := (tp{topic, oc.Partition}); !answered[t] {
				failed[t] = errors.New("the broker's answer did not mention the partition")
			}
		}
	}
	return failed, nil
}

// offer asks for off to be committed for t. Offers only move up: a lower one
// (a group recreated at 0, a failover to a replica behind) never replaces a
// higher one, not even while that one's commit is in flight.
func (c *committer) offer(t tp, off int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d, ok := c.done[t]; ok && off <= d {
		return
	}
	if w, ok := c.want[t]; !ok || off > w {
		c.want[t] = off
	}
}

// committed returns the last offset committed for t in this generation.
func (c *committer) committed(t tp) (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	off, ok := c.done[t]
	return off, ok
}

// join makes a partition one that reports at every tick; leave undoes it.
func (c *committer) join() {
	c.tickMu.Lock()
	c.members++
	c.tickMu.Unlock()
}

func (c *committer) leave() {
	c.tickMu.Lock()
	c.members--
	c.tickMu.Unlock()
}

// next returns the channel closed at the next tick and that tick's number.
func (c *committer) next() (<-chan struct{}, uint64) {
	c.tickMu.Lock()
	defer c.tickMu.Unlock()
	return c.tick, c.seq + 1
}

// report says a partition observed (or had nothing to observe) for tick
// seq. A late report (a later tick came) counts for nothing: its offer goes
// with the next commit.
func (c *committer) report(seq uint64) {
	c.tickMu.Lock()
	defer c.tickMu.Unlock()
	if seq != c.seq {
		return
	}
	if c.reported++; c.reported >= c.members {
		select {
		case c.allIn <- struct{}{}:
		default:
		}
	}
}

func (c *committer) run(ctx context.Context) {
	t := time.NewTicker(c.in.cfg.CommitInterval)
	defer t.Stop()
	// How long a tick waits for the partitions' reports: past it, it
	// commits what is known (a partition busy with a large append
	// reports late; its offer goes with the next tick).
	bound := min(c.in.cfg.CommitInterval/2, 200*time.Millisecond)
	wait := time.NewTimer(bound)
	defer wait.Stop()
	for {
		select {
		case <-t.C:
			c.tickMu.Lock()
			select {
			case <-c.allIn: // of an earlier tick
			default:
			}
			close(c.tick)
			c.tick, c.seq, c.reported = make(chan struct{}), c.seq+1, 0
			n := c.members
			c.tickMu.Unlock()
			if n > 0 {
				wait.Reset(bound)
				select {
				case <-c.allIn:
				case <-wait.C:
				case <-ctx.Done():
				}
				wait.Stop()
			}
			c.flush()
		case <-ctx.Done():
			// Wait for the partitions' final observations, bounded: a
			// member that overstays RebalanceTimeout is evicted and its
			// commit refused.
			waited := make(chan struct{})
			go func() { c.wg.Wait(); close(waited) }()
			select {
			case <-waited:
			case <-time.After(c.in.cfg.FinalCommitTimeout):
				c.in.log.Warn("final commit: some partitions did not report in time; committing what is known")
			}
			c.flush()
			return
		}
	}
}

// flush commits what was offered, bounded by FinalCommitTimeout (a commit
// must never hold a rebalance past its timeout).
func (c *committer) flush() {
	c.mu.Lock()
	if len(c.want) == 0 {
		c.mu.Unlock()
		return
	}
	batch := make(map[tp]int64, len(c.want))
	for t, off := range c.want {
		batch[t] = off
	}
	c.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), c.in.cfg.FinalCommitTimeout)
	defer cancel()
	failed, err := c.commit(ctx, batch)
	if err != nil {
		c.in.counters.commitErrs.Add(int64(len(batch)))
		c.in.log.Warn("kafka commit failed; will retry", "group", c.in.cfg.Group, "err", &CommitError{Offsets: byTopic(batch), Err: err})
		return
	}
	for t, err := range failed {
		c.in.counters.commitErrs.Add(1)
		c.in.log.Warn("kafka commit of a partition failed; the others are committed; will retry", "group", c.in.cfg.Group,
			"topic", t.topic, "partition", t.partition, "offset", batch[t], "err", err)
	}
	if len(failed) < len(batch) {
		c.in.counters.commits.Add(1)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for t, off := range batch {
		if _, bad := failed[t]; bad {
			continue
		}
		c.done[t] = max(c.done[t], off)
		if w, ok := c.want[t]; ok && w <= off {
			delete(c.want, t)
		}
	}
}

func byTopic(offsets map[tp]int64) map[string]map[int]int64 {
	out := map[string]map[int]int64{}
	for t, off := range offsets {
		if out[t.topic] == nil {
			out[t.topic] = map[int]int64{}
		}
		out[t.topic][t.partition] = off
	}
	return out
}
