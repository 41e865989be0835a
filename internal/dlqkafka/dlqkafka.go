// Package dlqkafka reads the dead letters the ingest exported to Kafka
// (bridge/dlqexport.go; docs/wire.md, "Durability of dead letters"), for
// "kbridge dlq --from-kafka" and the tests.
package dlqkafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/internal/wire"
)

// Ref names a dead letter in Kafka: <dead-letter topic>:<partition>@<offset>.
type Ref struct {
	Topic     string
	Partition int
	Offset    int64
}

func (r Ref) String() string {
	return r.Topic + ":" + strconv.Itoa(r.Partition) + "@" + strconv.FormatInt(r.Offset, 10)
}

// IsRef reports whether s has the shape of a Kafka reference (an '@'),
// rather than of a Redis one (<topic>:<partition>/<id>).
func IsRef(s string) bool { return strings.Contains(s, "@") }

// ParseRef parses a Ref as Ref.String prints it.
func ParseRef(s string) (Ref, error) {
	tp, off, ok := strings.Cut(s, "@")
	colon := strings.LastIndexByte(tp, ':')
	if !ok || colon <= 0 {
		return Ref{}, fmt.Errorf("Kafka dead letter reference %q: want <dead-letter topic>:<partition>@<offset>, as \"kbridge dlq list --from-kafka\" prints", s)
	}
	r := Ref{Topic: tp[:colon]}
	var err error
	if r.Partition, err = strconv.Atoi(tp[colon+1:]); err != nil || r.Partition < 0 {
		return Ref{}, fmt.Errorf("Kafka dead letter reference %q: bad partition", s)
	}
	if r.Offset, err = strconv.ParseInt(off, 10, 64); err != nil || r.Offset < 0 {
		return Ref{}, fmt.Errorf("Kafka dead letter reference %q: bad offset", s)
	}
	return r, nil
}

// DeadLetter is one message of a dead-letter topic.
type DeadLetter struct {
	// Ref is where it is in Kafka.
	Ref Ref
	// Time is the message's timestamp: when the ingest exported it (when it
	// was dead-lettered is Info.Time, from the kbridge.dlq.time header).
	Time time.Time
	wire.KafkaDeadLetter
	// Err is set when the message is not a kbridge dead letter
	// (wire.ErrNotDeadLetter) or its headers do not parse.
	Err error
}

// ErrNotFound is returned by Get when the offset is not in the topic.
var ErrNotFound = errors.New("no such dead letter in Kafka")

// Partitions returns the partition numbers of topic.
func Partitions(ctx context.Context, c *kafka.Client, topic string) ([]int, error) {
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	if len(md.Topics) != 1 {
		return nil, fmt.Errorf("metadata of %s: %d topics in the answer", topic, len(md.Topics))
	}
	if err := md.Topics[0].Error; err != nil {
		return nil, fmt.Errorf("dead-letter topic %s: %w", topic, err)
	}
	var ps []int
	for _, p := range md.Topics[0].Partitions {
		ps = append(ps, p.ID)
	}
	slices.Sort(ps)
	return ps, nil
}

// List reads the given partitions of topic (all when nil) from their log
// start to the log end they had when List began, in order, and calls fn for
// each message until fn returns false.
func List(ctx context.Context, c *kafka.Client, topic string, partitions []int, fn func(DeadLetter) bool) error {
	if partitions == nil {
		var err error
		if partitions, err = Partitions(ctx, c, topic); err != nil {
			return err
		}
	}
	for _, p := range partitions {
		first, last, err := bounds(ctx, c, topic, p)
		if err != nil {
			return err
		}
		more, err := read(ctx, c, topic, p, first, last, fn)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// Get returns the dead letter at ref.
func Get(ctx context.Context, c *kafka.Client, ref Ref) (DeadLetter, error) {
	first, last, err := bounds(ctx, c, ref.Topic, ref.Partition)
	if err != nil {
		return DeadLetter{}, err
	}
	if ref.Offset < first || ref.Offset >= last {
		return DeadLetter{}, fmt.Errorf("%w: %s (the partition holds offsets %d to %d)", ErrNotFound, ref, first, last-1)
	}
	var out *DeadLetter
	_, err = read(ctx, c, ref.Topic, ref.Partition, ref.Offset, ref.Offset+1, func(d DeadLetter) bool {
		if d.Ref.Offset == ref.Offset {
			out = &d
		}
		return false
	})
	if err != nil {
		return DeadLetter{}, err
	}
	if out == nil {
		return DeadLetter{}, fmt.Errorf("%w: %s", ErrNotFound, ref)
	}
	return *out, nil
}

func bounds(ctx context.Context, c *kafka.Client, topic string, p int) (first, last int64, err error) {
	if first, err = listOffset(ctx, c, topic, kafka.FirstOffsetOf(p)); err != nil {
		return 0, 0, err
	}
	if last, err = listOffset(ctx, c, topic, kafka.LastOffsetOf(p)); err != nil {
		return 0, 0, err
	}
	return first, last, nil
}

func listOffset(ctx context.Context, c *kafka.Client, topic string, req kafka.OffsetRequest) (int64, error) {
	res, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: {req}}})
	if err != nil {
		return 0, fmt.Errorf("list offsets of %s/%d: %w", topic, req.Partition, err)
	}
	for _, o := range res.Topics[topic] {
		if o.Partition != req.Partition {
			continue
		}
		if o.Error != nil {
			return 0, fmt.Errorf("list offsets of %s/%d: %w", topic, req.Partition, o.Error)
		}
		if req.Timestamp == kafka.FirstOffset {
			return o.FirstOffset, nil
		}
		return o.LastOffset, nil
	}
	return 0, fmt.Errorf("list offsets of %s/%d: no answer", topic, req.Partition)
}

// read fetches [from, to) of one partition; it reports whether fn wants more.
func read(ctx context.Context, c *kafka.Client, topic string, p int, from, to int64, fn func(DeadLetter) bool) (bool, error) {
	off := from
	idle := 0
	for off < to {
		res, err := c.Fetch(ctx, &kafka.FetchRequest{Topic: topic, Partition: p, Offset: off,
			MinBytes: 1, MaxBytes: 4 << 20, MaxWait: 200 * time.Millisecond})
		if err == nil {
			err = res.Error
		}
		if err != nil {
			return false, fmt.Errorf("fetch %s/%d at %d: %w", topic, p, off, err)
		}
		n := 0
		for {
			r, err := res.Records.ReadRecord()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return false, fmt.Errorf("read %s/%d at %d: %w", topic, p, off, err)
			}
			if r.Offset < off {
				continue // a fetch may start at the batch before the offset asked
			}
			if r.Offset >= to {
				return true, nil
			}
			d, err := decode(topic, p, r)
			if err != nil {
				return false, err
			}
			off, n = r.Offset+1, n+1
			if !fn(d) {
				return false, nil
			}
		}
		if n == 0 {
			// Nothing but control batches or a compacted gap up to the
			// end: kbridge writes neither, so stop rather than spin.
			if idle++; idle > 3 {
				return true, nil
			}
		}
	}
	return true, nil
}

func decode(topic string, p int, r *kafka.Record) (DeadLetter, error) {
	d := DeadLetter{Ref: Ref{Topic: topic, Partition: p, Offset: r.Offset}, Time: r.Time}
	var m wire.DLQMessage
	var err error
	if m.Key, err = kafka.ReadAll(r.Key); err != nil {
		return d, fmt.Errorf("read key of %s: %w", d.Ref, err)
	}
	if m.Value, err = kafka.ReadAll(r.Value); err != nil {
		return d, fmt.Errorf("read value of %s: %w", d.Ref, err)
	}
	for _, h := range r.Headers {
		m.Headers = append(m.Headers, wire.Header{Key: h.Key, Value: h.Value})
	}
	m.Time = r.Time
	d.KafkaDeadLetter, d.Err = wire.DecodeDLQMessage(m)
	return d, nil
}
