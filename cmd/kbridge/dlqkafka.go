package main

// "kbridge dlq" on the dead letters the ingest exported to Kafka
// (--from-kafka, and references <dead-letter topic>:<partition>@<offset>),
// and the export state of the dead letters in Redis. See docs/wire.md,
// "Durability of dead letters".

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"github.com/urfave/cli/v2"

	"github.com/kbridge/kbridge/internal/dlqkafka"
	"github.com/kbridge/kbridge/internal/wire"
	"github.com/kbridge/kbridge/worker"
)

// dlqKafkaFlags reach the dead-letter topics: the Kafka flags and the
// template of the ingest's --dlq-topic.
func dlqKafkaFlags() []cli.Flag {
	return append(kafkaFlags(),
		&cli.StringFlag{Name: "dlq-topic", Value: wire.DefaultDLQTopic, EnvVars: []string{"KBRIDGE_DLQ_TOPIC"},
			Usage: "the ingest's --dlq-topic: Kafka topic of each topic's dead letters ({topic} = the topic's name)"})
}

// newKafkaClient is a client of --brokers with the TLS and SASL flags (exit 2
// on a bad one). Its transport is its own: kafka-go's default one would
// answer metadata requests from a shared cache.
func newKafkaClient(c *cli.Context) (*kafka.Client, func(), error) {
	var probs []string
	tlsCfg, mech := kafkaSecurity(c, &probs)
	brokers := splitList(c.StringSlice("brokers"))
	if len(brokers) == 0 {
		probs = append(probs, "no Kafka brokers (--brokers)")
	}
	if len(probs) > 0 {
		return nil, nil, cli.Exit("invalid Kafka flags:\n  - "+strings.Join(probs, "\n  - "), 2)
	}
	tr := &kafka.Transport{DialTimeout: 10 * time.Second, TLS: tlsCfg, SASL: mech, ClientID: "kbridge-dlq"}
	return &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 30 * time.Second, Transport: tr}, tr.CloseIdleConnections, nil
}

// dlqTopicsToRead returns the dead-letter topics of --topic, or of every
// topic in the registry.
func dlqTopicsToRead(ctx context.Context, c *cli.Context, rdb redis.UniversalClient, f worker.Filter) ([]string, error) {
	tmpl := c.String("dlq-topic")
	if f.Topic != "" {
		return []string{wire.DLQTopic(tmpl, f.Topic)}, nil
	}
	streams, err := rdb.SMembers(ctx, wire.RegistryKey(c.String("prefix"))).Result()
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("cannot read the topics from Redis (%v): give --topic", err), 1)
	}
	seen := map[string]bool{}
	var out []string
	for _, s := range streams {
		if _, topic, _, err := wire.ParseStreamKey(s); err == nil && !seen[wire.DLQTopic(tmpl, topic)] {
			seen[wire.DLQTopic(tmpl, topic)] = true
			out = append(out, wire.DLQTopic(tmpl, topic))
		}
	}
	if len(out) == 0 {
		return nil, cli.Exit("Redis knows no topic (an empty registry): give --topic", 2)
	}
	slices.Sort(out)
	return out, nil
}

// kafkaDeadLetter is a dead letter in Kafka, and whether its copy is still
// in Redis.
type kafkaDeadLetter struct {
	dlqkafka.DeadLetter
	inRedis *bool // nil: cannot tell (Redis unreachable)
}

// listKafkaDeadLetters reads the dead letters f selects from the dead-letter
// topics, and looks their refs up in Redis. Messages that are not kbridge
// dead letters are counted in other.
func listKafkaDeadLetters(ctx context.Context, c *cli.Context, rdb redis.UniversalClient, kc *kafka.Client, f worker.Filter) (dls []kafkaDeadLetter, other int, err error) {
	topics, err := dlqTopicsToRead(ctx, c, rdb, f)
	if err != nil {
		return nil, 0, err
	}
	for _, topic := range topics {
		var parts []int
		if f.Partitions != nil {
			// The ingest puts partition p's dead letters in partition
			// p modulo the dead-letter topic's partition count.
			all, err := dlqkafka.Partitions(ctx, kc, topic)
			if err != nil {
				return dls, other, err
			}
			for _, p := range f.Partitions {
				if q := all[p%len(all)]; !slices.Contains(parts, q) {
					parts = append(parts, q)
				}
			}
			slices.Sort(parts)
		}
		err := dlqkafka.List(ctx, kc, topic, parts, func(d dlqkafka.DeadLetter) bool {
			if d.Err != nil {
				other++
				return true
			}
			if (f.Topic != "" && d.Topic != f.Topic) || (f.Partitions != nil && !slices.Contains(f.Partitions, d.Partition)) ||
				(f.Group != "" && d.Info.Group != f.Group) {
				return true
			}
			dls = append(dls, kafkaDeadLetter{DeadLetter: d})
			return f.Limit <= 0 || len(dls) < f.Limit
		})
		if err != nil {
			return dls, other, err
		}
		if f.Limit > 0 && len(dls) >= f.Limit {
			break
		}
	}
	lookUpInRedis(ctx, rdb, c.String("prefix"), dls)
	return dls, other, nil
}

// lookUpInRedis sets inRedis of each dead letter (one pipeline; left nil if
// Redis does not answer).
func lookUpInRedis(ctx context.Context, rdb redis.UniversalClient, prefix string, dls []kafkaDeadLetter) {
	pipe := rdb.Pipeline()
	cmds := make([]*redis.XMessageSliceCmd, len(dls))
	for i, d := range dls {
		topic, part, id, err := worker.ParseRef(d.KafkaDeadLetter.Ref)
		if err != nil {
			continue
		}
		cmds[i] = pipe.XRange(ctx, wire.DLQKey(wire.StreamKey(prefix, topic, part)), id, id)
	}
	if pipe.Len() == 0 {
		return
	}
	_, _ = pipe.Exec(ctx)
	for i, cmd := range cmds {
		if cmd == nil || cmd.Err() != nil {
			continue
		}
		in := len(cmd.Val()) == 1
		dls[i].inRedis = &in
	}
}

// getKafkaDeadLetters fetches the dead letters Kafka references name.
func getKafkaDeadLetters(ctx context.Context, rdb redis.UniversalClient, prefix string, kc *kafka.Client, refs []string) ([]kafkaDeadLetter, error) {
	var dls []kafkaDeadLetter
	for _, s := range refs {
		ref, err := dlqkafka.ParseRef(s)
		if err != nil {
			return nil, cli.Exit(err.Error(), 2)
		}
		d, err := dlqkafka.Get(ctx, kc, ref)
		if err != nil {
			return nil, cli.Exit(err.Error(), 1)
		}
		if d.Err != nil {
			return nil, cli.Exit(fmt.Sprintf("%s: %v", ref, d.Err), 1)
		}
		dls = append(dls, kafkaDeadLetter{DeadLetter: d})
	}
	lookUpInRedis(ctx, rdb, prefix, dls)
	return dls, nil
}

// replayedTTL is how long the record of a replay is kept (refreshed by every
// replay of the partition): "kbridge dlq replay --from-kafka" skips what was
// replayed within it, so that running it twice hands nothing over twice.
const replayedTTL = 30 * 24 * time.Hour

// markReplayed records that the dead letters refs (Redis refs) of stream
// were replayed now.
func markReplayed(ctx context.Context, rdb redis.UniversalClient, stream string, refs []string) error {
	if len(refs) == 0 {
		return nil
	}
	key := wire.DLQReplayedKey(stream)
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	args := make([]any, 0, 2*len(refs))
	for _, r := range refs {
		args = append(args, r, now)
	}
	// Commands of the documented ACL rule only (docs/operations.md).
	pipe := rdb.Pipeline()
	pipe.HSet(ctx, key, args...)
	pipe.PExpire(ctx, key, replayedTTL)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("record the replay in %s: %w", key, err)
	}
	return nil
}

// replayKafkaDeadLetters hands dead letters read from Kafka back to the
// workers. One still in Redis is replayed from there (moved, so it cannot be
// replayed twice); one replayed before (recorded in the partition's
// wire.DLQReplayedKey) is skipped unless again; the others are added to the
// partition's replay stream, as "kbridge dlq replay" does with Redis dead
// letters. A stub (no record) is not replayed: from Redis only with force
// (the replay stream would hold its only copy), and not at all when Redis no
// longer has it. It returns what it replayed, skipped (replayed before) and
// held back (stubs), and writes a line per one left alone to report.
func replayKafkaDeadLetters(ctx context.Context, rdb redis.UniversalClient, prefix string, dls []kafkaDeadLetter, again, force bool, report func(string)) (replayed, skipped, held int, err error) {
	trimmed := map[string]bool{}
	replayedBefore := map[string]map[string]string{} // stream -> ref -> Unix ms; read once, kept up to date
	mark := func(stream, ref string) error {
		if err := markReplayed(ctx, rdb, stream, []string{ref}); err != nil {
			return err
		}
		if m := replayedBefore[stream]; m != nil {
			m[ref] = strconv.FormatInt(time.Now().UnixMilli(), 10)
		}
		return nil
	}
	for _, d := range dls {
		stream := wire.StreamKey(prefix, d.Topic, d.Partition)
		topic, part, _, perr := worker.ParseRef(d.KafkaDeadLetter.Ref)
		if perr == nil && (topic != d.Topic || part != d.Partition) {
			perr = fmt.Errorf("ref %s names another partition than %s/%d", d.KafkaDeadLetter.Ref, d.Topic, d.Partition)
		}
		if perr != nil {
			return replayed, skipped, held, fmt.Errorf("%s: %w", d.Ref, perr)
		}
		if d.inRedis == nil {
			lookUpInRedis(ctx, rdb, prefix, []kafkaDeadLetter{d})
		}
		if d.inRedis != nil && *d.inRedis {
			rd, err := worker.GetDeadLetter(ctx, rdb, prefix, d.KafkaDeadLetter.Ref)
			if err == nil {
				if d.Stub != "" && !force {
					report(fmt.Sprintf("%s: a stub in Kafka (%s): the record is in %s, whose replay stream would then hold its only copy: not replayed; --force to replay it from Redis anyway",
						d.Ref, d.Stub, d.KafkaDeadLetter.Ref))
					held++
					continue
				}
				n, err := worker.ReplayDeadLetters(ctx, rdb, []worker.DeadLetter{rd})
				if err != nil {
					return replayed, skipped, held, err
				}
				if err := mark(stream, d.KafkaDeadLetter.Ref); err != nil {
					return replayed, skipped, held, err
				}
				replayed += n
				continue
			}
			if !errors.Is(err, worker.ErrNotFound) {
				return replayed, skipped, held, err
			}
		}
		if !again {
			if replayedBefore[stream] == nil {
				m, err := rdb.HGetAll(ctx, wire.DLQReplayedKey(stream)).Result()
				if err != nil {
					return replayed, skipped, held, fmt.Errorf("read %s: %w", wire.DLQReplayedKey(stream), err)
				}
				replayedBefore[stream] = m
			}
			if when, ok := replayedBefore[stream][d.KafkaDeadLetter.Ref]; ok {
				ms, _ := strconv.ParseInt(when, 10, 64)
				report(fmt.Sprintf("%s: replayed already at %s (--again to replay it once more)", d.Ref, time.UnixMilli(ms).Format(time.RFC3339)))
				skipped++
				continue
			}
		}
		if d.Stub != "" {
			report(fmt.Sprintf("%s: a stub (%s), and Redis no longer has %s: nothing to replay; produce the record again from its source topic",
				d.Ref, d.Stub, d.KafkaDeadLetter.Ref))
			held++
			continue
		}
		replay := wire.ReplayKey(stream)
		group := d.Info.Group
		if group == "" {
			group = worker.DefaultGroup
		}
		if !trimmed[replay] {
			if err := worker.TrimReplay(ctx, rdb, replay); err != nil {
				return replayed, skipped, held, err
			}
			trimmed[replay] = true
		}
		if err := rdb.XGroupCreateMkStream(ctx, replay, group, "0").Err(); err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
			return replayed, skipped, held, fmt.Errorf("create group %s on %s: %w", group, replay, err)
		}
		fields := wire.ReplayFields(d.EntryFields())
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: replay, ID: "*", Values: fields}).Err(); err != nil {
			return replayed, skipped, held, fmt.Errorf("replay %s to %s: %w", d.Ref, replay, err)
		}
		if err := mark(stream, d.KafkaDeadLetter.Ref); err != nil {
			return replayed, skipped, held, err
		}
		replayed++
	}
	return replayed, skipped, held, nil
}

// exportState says whether Kafka has a dead letter of Redis: exported in
// full (acknowledged in the export group), as a stub only (acknowledged, and
// in the partition's wire.DLQStubsKey: over the ingest's --dlq-max-bytes),
// not exported, or unknown when the dead-letter stream has no export group
// (no ingest with the export on has looked at the partition since).
type exportState int

const (
	exportUnknown exportState = iota
	exported
	notExported
	exportedStub
)

// exportInfo is a dead letter's export state, and why it is a stub.
type exportInfo struct {
	state exportState
	stub  string
}

// deadLetterExportState reads the export state of d.
func deadLetterExportState(ctx context.Context, rdb redis.UniversalClient, d worker.DeadLetter) (exportInfo, error) {
	groups, err := rdb.XInfoGroups(ctx, d.DLQ).Result()
	if err != nil {
		return exportInfo{}, fmt.Errorf("XINFO GROUPS %s: %w", d.DLQ, err)
	}
	for _, g := range groups {
		if g.Name != wire.DLQExportGroup {
			continue
		}
		p, err := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: d.DLQ, Group: g.Name, Start: d.ID, End: d.ID, Count: 1}).Result()
		if err != nil {
			return exportInfo{}, fmt.Errorf("XPENDING %s %s: %w", d.DLQ, g.Name, err)
		}
		if len(p) > 0 || compareIDs(d.ID, g.LastDeliveredID) > 0 {
			return exportInfo{state: notExported}, nil
		}
		why, err := rdb.HGet(ctx, wire.DLQStubsKey(d.Stream), d.ID).Result()
		switch {
		case err == nil:
			return exportInfo{state: exportedStub, stub: why}, nil
		case !errors.Is(err, redis.Nil):
			return exportInfo{}, fmt.Errorf("HGET %s %s: %w", wire.DLQStubsKey(d.Stream), d.ID, err)
		}
		return exportInfo{state: exported}, nil
	}
	return exportInfo{state: exportUnknown}, nil
}

// unsafeToRemove says why removing d from its dead-letter stream (replay,
// delete) could lose its record, given its export state; "" when Kafka has
// it in full.
func unsafeToRemove(d worker.DeadLetter, x exportInfo) string {
	switch x.state {
	case exported:
		return ""
	case notExported:
		return "not in Kafka yet (the ingest exports it within seconds; if it stays so, see dlq_export_error in the partition's status hash): Redis holds its only copy"
	case exportedStub:
		where := "its source topic"
		if !d.Malformed {
			where = fmt.Sprintf("offset %d of %s partition %d, while that topic's retention keeps it", d.Offset, d.Topic, d.Partition)
		}
		return "Kafka has only a stub of it (over the ingest's --dlq-max-bytes: its coordinates, not the record): Redis holds its only copy besides " + where
	}
	return "its export state is unknown: " + wire.DLQKey(d.Stream) + " has no group " + wire.DLQExportGroup +
		" (no ingest exporting dead letters has looked at the partition since: the ingest is down, or runs with --dlq-export=false), so Redis may hold its only copy"
}

// compareIDs orders stream IDs.
func compareIDs(a, b string) int {
	am, as, _ := strings.Cut(a, "-")
	bm, bs, _ := strings.Cut(b, "-")
	x, _ := strconv.ParseUint(am, 10, 64)
	y, _ := strconv.ParseUint(bm, 10, 64)
	if x != y {
		if x < y {
			return -1
		}
		return 1
	}
	x, _ = strconv.ParseUint(as, 10, 64)
	y, _ = strconv.ParseUint(bs, 10, 64)
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}
