package bridge

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/tracker"
)

// A topic deleted and created again under the same name starts its offsets
// at 0 again. A stream that holds the old topic's records up to offset T
// would take the new topic's records 0..T for duplicates and skip them, and
// the commit would pass them (issue 7 point 6). So the ingest records, beside
// each stream, the Kafka topic ID (KIP-516; Kafka 2.8 and later) of the
// records it appended — in the hash <stream>:topic, field topic_id — and
// stalls a partition whose topic now has another ID: nothing fetched,
// nothing committed, the reason in the status hash, in kbridge status and in
// the kbridge_ingest_partition_stalled metric. The runbook (docs/operations.md,
// "A recreated topic") is to let the workers finish the old records, then
// delete the stream: the ingest sees it gone and starts the partition afresh
// for the new topic, from the group's commit (or --start-offset).
//
// The check runs at assignment and at every observation, against the ID of
// the last metadata read: the poll every MetadataInterval, or sooner the
// check the committer makes right before every commit, which never commits
// a partition whose topic has another ID than the one checked here
// (committer.verify). A topic recreated and refilled within that time may
// have some new records fetched at the old position and appended before it
// is seen: they are delivered again (duplicates) after the runbook, which
// starts the partition from the start offset, since no commit reached the
// new topic.

// topicIDKey is the hash beside a stream that records the topic ID of its
// records (field topic_id).
func topicIDKey(stream string) string { return stream + ":topic" }

// recordTopicIDScript records ARGV[1] as the stream's topic ID unless one is
// recorded already (or ARGV[2] is '1': replace it), and returns the one
// recorded. KEYS[1] the topicIDKey.
var recordTopicIDScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], 'topic_id')
if (not cur or ARGV[2] == '1') and ARGV[1] ~= '' then
  redis.call('HSET', KEYS[1], 'topic_id', ARGV[1])
  return ARGV[1]
end
return cur or ''
`)

// Stall causes (PartitionStatus.StallCause).
const (
	// StallTopicRecreated: the topic has another topic ID than the one
	// whose records the stream holds.
	StallTopicRecreated = "topic_recreated"
	// StallBeyondLogEnd: the stream or the commit is beyond the log end
	// (the topic was recreated or its log truncated, on a broker without
	// topic IDs).
	StallBeyondLogEnd = "beyond_log_end"
	// StallStrayEntry: the stream's top is an entry kbridge did not write.
	StallStrayEntry = "stray_entry"
	// StallBatchTooLarge: a record batch decompresses to more than
	// --fetch-batch-max-bytes; it lifts on a restart with a higher one.
	StallBatchTooLarge = "batch_too_large"
)

// checkTopicID compares the topic's ID, as the last metadata poll saw it,
// with the one recorded beside the stream (recording it if none is), and
// stalls the partition on a mismatch. It reports whether the partition is
// stalled for that reason. Without a topic ID (an old broker) it does
// nothing. At assignment (fresh: the tracker knows nothing of the stream
// yet) a stream that never held a record takes the topic's ID whatever was
// recorded: it holds nothing of an old topic (the runbook deleted the stream
// and an ingest created it again).
func (p *partition) checkTopicID(ctx context.Context, fresh bool) bool {
	now := p.in.topics.id(p.t.topic)
	if now.IsZero() || (now == p.topicID && p.stallCause != StallTopicRecreated) {
		return p.stallCause == StallTopicRecreated
	}
	replace := "0"
	if fresh && p.snap.Exists && p.snap.Top == tracker.None {
		replace = "1"
	}
	got, err := recordTopicIDScript.Run(ctx, p.stream.rdb, []string{topicIDKey(p.stream.key)}, now.String(), replace).Text()
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn("reading the stream's topic ID failed; will check again", "err", err)
		}
		return p.stallCause == StallTopicRecreated
	}
	recorded := parseTopicID(got)
	if recorded == now {
		p.topicID = now
		p.c.vouch(p.t, now) // its commits go to this topic only (committer.verify)
		return false
	}
	p.stallRecreated(recorded, now)
	return true
}

// stallRecreated stops the partition: the stream holds records of another
// topic of the same name.
func (p *partition) stallRecreated(recorded, now topicID) {
	reason := fmt.Sprintf("the topic was deleted and created again: the stream holds records of topic ID %s, %s now has topic ID %s; not fetching nor committing until the stream is deleted (docs/operations.md, \"A recreated topic\")",
		recorded, p.t.topic, now)
	if p.stalled == reason {
		return
	}
	p.stalled, p.stallCause, p.stray = reason, StallTopicRecreated, false
	p.log.Error("partition stalled: "+reason, "stream_top", p.snap.Top, "committed", p.tr.Committed())
}

// restartFresh starts a partition stalled by a recreated topic afresh once
// an operator deleted its stream (the runbook): setup creates it again
// empty, and records the new topic's ID over the old one (checkTopicID,
// fresh); the position comes from the group's commit for the new topic
// (none: the start offset), not from anything the old stream said.
func (p *partition) restartFresh(ctx context.Context) error {
	p.log.Warn("the stream of the recreated topic was deleted: starting the partition afresh for the new topic")
	committed := int64(tracker.None)
	err := retry(ctx, p.log, "kafka", func() error {
		res, err := p.in.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: p.in.cfg.Group,
			Topics: map[string][]int{p.t.topic: {p.t.partition}}})
		if err == nil {
			err = res.Error
		}
		if err != nil {
			return err
		}
		for _, o := range res.Topics[p.t.topic] {
			if o.Partition == p.t.partition && o.Error == nil && o.CommittedOffset >= 0 {
				committed = o.CommittedOffset
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Nothing the generation's committer remembers of the old topic counts:
	// its commit would hold the new topic's offers back and show in status
	// above the new log end.
	p.c.forget(p.t)
	p.assigned = committed
	p.stalled, p.stallCause, p.stray = "", "", false
	p.topicID = topicID{}
	p.lastTrim = tracker.None
	p.paused = false
	return p.setup(ctx)
}
