package bridge

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
//
// A commit never lands on a topic incarnation whose records the ingest did
// not append (issue 7 points 1 and 6): right before each request, one
// metadata request (no auto-creation) reads the topics being committed, and a
// partition whose topic is gone, or has another topic ID than the one its
// partition vouched for (vouch, from the ID recorded beside its stream), is
// left out — its offers dropped, the topic's new state told to the topic
// watch at once, so that the partition stalls (topic_recreated) or its topic
// is dropped from the subscription. Without that check a topic deleted and
// created again within --metadata-interval was committed on its new
// incarnation at the old position (the new records below it never
// delivered). What is left is the time between that metadata answer and the
// commit's, a round trip: a commit to a deleted topic is refused by the
// broker (UNKNOWN_TOPIC_OR_PARTITION), so only a delete and a create both
// inside that round trip could slip through.
type committer struct {
	in *Ingest
	// commit sends one commit request for the generation: failed holds
	// the partitions the broker refused, err a failure of the whole
	// request (nothing committed).
	commit func(ctx context.Context, offsets map[tp]int64) (failed map[tp]error, err error)
	// check reads what the brokers say now about topics, right before a
	// commit (nil: no check, tests of the commit alone).
	check func(ctx context.Context, topics []string) ([]topicMeta, error)
	wg    sync.WaitGroup // the generation's partition functions

	mu   sync.Mutex
	want map[tp]int64 // offered, not yet committed
	done map[tp]int64 // committed in this generation

	tickMu   sync.Mutex
	tick     chan struct{} // closed at the next tick, then replaced
	seq      uint64        // ticks so far
	members  int           // partitions that report at each tick
	reported int           // partitions that reported for tick seq
	allIn    chan struct{} // every member reported for tick seq
	// ids holds, per partition, the topic ID its stream's records belong
	// to (vouch); a partition without one is committed only while its
	// topic exists and the brokers give no topic IDs.
	ids map[tp]topicID
	// epoch counts the forgets of a partition: a commit in flight across
	// one is not remembered.
	epoch map[tp]int
}

func (in *Ingest) newCommitter(gen *kafka.Generation) *committer {
	c := &committer{in: in, want: map[tp]int64{}, done: map[tp]int64{},
		tick: make(chan struct{}), allIn: make(chan struct{}, 1)}
	c.commit = func(ctx context.Context, offsets map[tp]int64) (map[tp]error, error) {
		return in.commitOffsets(ctx, gen.GroupID, int(gen.ID), gen.MemberID, offsets)
	}
	c.check = in.metadata
	return c
}

// vouch says that the records of t's stream are those of the topic with ID
// id (checkTopicID found it recorded beside the stream): commits of t go
// only to that topic.
func (c *committer) vouch(t tp, id topicID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ids == nil {
		c.ids = map[tp]topicID{}
	}
	c.ids[t] = id
}

// forget drops everything the committer knows of t — what was offered, what
// was committed, the topic ID — when the partition starts afresh on a new
// incarnation of its topic (restartFresh): the old incarnation's commit must
// neither hold the new one's offers back nor be reported as its commit.
func (c *committer) forget(t tp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.want, t)
	delete(c.done, t)
	delete(c.ids, t)
	if c.epoch == nil {
		c.epoch = map[tp]int{}
	}
	c.epoch[t]++
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
//
// A topic that is not bridged now (deleted, or not readable) takes no
// offers: what is offered before it is seen gone is checked before the
// commit (verify).
func (c *committer) offer(t tp, off int64) {
	if c.in.topics != nil && c.in.topics.state(t.topic) != TopicBridged {
		return
	}
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
	epochs := make(map[tp]int, len(c.want))
	ids := make(map[tp]topicID, len(c.want))
	for t, off := range c.want {
		batch[t], epochs[t], ids[t] = off, c.epoch[t], c.ids[t]
	}
	c.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), c.in.cfg.FinalCommitTimeout)
	defer cancel()
	if err := c.verify(ctx, batch, ids); err != nil {
		c.in.counters.commitErrs.Add(int64(len(batch)))
		c.in.log.Warn("kafka commit not sent: reading the topics' IDs before it failed; will retry", "group", c.in.cfg.Group,
			"err", &CommitError{Offsets: byTopic(batch), Err: err})
		return
	}
	if len(batch) == 0 {
		return
	}
	failed, err := c.commit(ctx, batch)
	if err != nil {
		c.in.counters.commitErrs.Add(int64(len(batch)))
		c.in.log.Warn("kafka commit failed; will retry", "group", c.in.cfg.Group, "err", &CommitError{Offsets: byTopic(batch), Err: err})
		return
	}
	gone := map[string]bool{}
	for t, err := range failed {
		c.in.counters.commitErrs.Add(1)
		c.in.log.Warn("kafka commit of a partition failed; the others are committed; will retry", "group", c.in.cfg.Group,
			"topic", t.topic, "partition", t.partition, "offset", batch[t], "err", err)
		if errors.Is(err, kafka.UnknownTopicOrPartition) {
			gone[t.topic] = true
		}
	}
	if len(gone) > 0 && c.check != nil {
		// The first sign that a topic is gone: read it again now rather
		// than at the next metadata poll (topics.go).
		c.in.confirmTopics(ctx)
	}
	if len(failed) < len(batch) {
		c.in.counters.commits.Add(1)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for t, off := range batch {
		if _, bad := failed[t]; bad || c.epoch[t] != epochs[t] {
			continue // refused, or forgotten while in flight
		}
		c.done[t] = max(c.done[t], off)
		if w, ok := c.want[t]; ok && w <= off {
			delete(c.want, t)
		}
	}
}

// verify removes from batch the partitions whose commit could land on a
// topic incarnation whose records the ingest did not append: the topic does
// not exist now, or has another topic ID than the one the partition vouched
// for, or has one while the partition vouched for none. Their offers are
// dropped (the partition offers again once it is known to be safe, or starts
// afresh), and the topic watch is told at once what was found. A failure of
// the metadata request commits nothing.
func (c *committer) verify(ctx context.Context, batch map[tp]int64, ids map[tp]topicID) error {
	if c.check == nil || len(batch) == 0 {
		return nil
	}
	var topics []string
	for t := range batch {
		if !slices.Contains(topics, t.topic) {
			topics = append(topics, t.topic)
		}
	}
	slices.Sort(topics)
	metas, err := c.check(ctx, topics)
	if err != nil {
		return err
	}
	now := map[string]topicMeta{}
	for _, m := range metas {
		now[m.Name] = m
	}
	var refused []tp
	for t := range batch {
		m, vouched := now[t.topic], ids[t]
		var why string
		switch {
		case m.Err != nil:
			why = "the topic is not there: " + m.Err.Error()
		case !m.ID.IsZero() && vouched.IsZero():
			why = "the stream's topic ID is not checked yet"
		case !m.ID.IsZero() && m.ID != vouched:
			why = fmt.Sprintf("the topic was deleted and created again: the stream holds records of topic ID %s, the topic now has ID %s", vouched, m.ID)
		default:
			continue
		}
		refused = append(refused, t)
		c.in.log.Warn("kafka commit of a partition not sent: "+why, "group", c.in.cfg.Group,
			"topic", t.topic, "partition", t.partition, "offset", batch[t])
		delete(batch, t)
	}
	if len(refused) == 0 {
		return nil
	}
	c.mu.Lock()
	for _, t := range refused {
		delete(c.want, t)
	}
	c.mu.Unlock()
	c.in.topics.learn(c.in, metas)
	return nil
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
