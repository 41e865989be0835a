package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
)

// Kafka is a client of the benchmark's broker.
type Kafka struct {
	Brokers []string
	c       *kafka.Client
}

// NewKafka returns a client of brokers.
func NewKafka(brokers []string) *Kafka {
	return &Kafka{Brokers: brokers, c: &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 30 * time.Second}}
}

// CreateTopic creates topic with n partitions and waits until every
// partition has a leader and answers ListOffsets.
func (k *Kafka) CreateTopic(ctx context.Context, topic string, n int) error {
	res, err := k.c.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: n, ReplicationFactor: 1,
	}}})
	if err != nil {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	if e := res.Errors[topic]; e != nil && !errors.Is(e, kafka.TopicAlreadyExists) {
		return fmt.Errorf("create topic %s: %w", topic, e)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		_, err := k.LogEnds(ctx, topic, n)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("topic %s not ready: %w", topic, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// DeleteTopics deletes topics (errors ignored: a clean-up).
func (k *Kafka) DeleteTopics(ctx context.Context, topics ...string) {
	if len(topics) > 0 {
		_, _ = k.c.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: topics})
	}
}

// LogEnds returns the log end offset of partitions 0..n-1 of topic.
func (k *Kafka) LogEnds(ctx context.Context, topic string, n int) (map[int]int64, error) {
	req := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	for p := range n {
		req.Topics[topic] = append(req.Topics[topic], kafka.LastOffsetOf(p))
	}
	res, err := k.c.ListOffsets(ctx, req)
	if err != nil {
		return nil, err
	}
	out := map[int]int64{}
	for _, o := range res.Topics[topic] {
		if o.Error != nil {
			return nil, fmt.Errorf("list offsets %s/%d: %w", topic, o.Partition, o.Error)
		}
		out[o.Partition] = o.LastOffset
	}
	if len(out) != n {
		return nil, fmt.Errorf("list offsets %s: %d of %d partitions", topic, len(out), n)
	}
	return out, nil
}

// Committed returns the group's committed offsets of partitions 0..n-1 of
// topic (-1 where none).
func (k *Kafka) Committed(ctx context.Context, group, topic string, n int) (map[int]int64, error) {
	ps := make([]int, n)
	for i := range ps {
		ps[i] = i
	}
	res, err := k.c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ps}})
	if err != nil {
		return nil, err
	}
	if res.Error != nil {
		return nil, res.Error
	}
	out := map[int]int64{}
	for _, p := range res.Topics[topic] {
		out[p.Partition] = p.CommittedOffset
	}
	return out, nil
}

// Produce writes n records with values of size bytes to topic, spread
// round-robin over the given partitions, keys "k<i>". It returns when every
// record is acknowledged by the broker.
func (k *Kafka) Produce(ctx context.Context, topic string, partitions []int, n, size int) error {
	var next atomic.Int64
	w := &kafka.Writer{
		Addr: kafka.TCP(k.Brokers...), Topic: topic,
		Balancer: kafka.BalancerFunc(func(_ kafka.Message, _ ...int) int {
			return partitions[int(next.Add(1)-1)%len(partitions)]
		}),
		BatchSize: 2000, BatchBytes: 900_000, // under the broker's message.max.bytes BatchTimeout: 2 * time.Millisecond,
		RequiredAcks: kafka.RequireOne, Compression: 0,
	}
	defer w.Close()
	value := make([]byte, size)
	for i := range value {
		value[i] = 'x'
	}
	const chunk = 20000
	msgs := make([]kafka.Message, 0, chunk)
	for done := 0; done < n; {
		msgs = msgs[:0]
		for i := 0; i < chunk && done+i < n; i++ {
			msgs = append(msgs, kafka.Message{Key: []byte("k" + strconv.Itoa(done+i)), Value: value})
		}
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			msg := err.Error()
			if len(msg) > 300 {
				msg = msg[:300] + "..."
			}
			return fmt.Errorf("produce to %s: %s", topic, msg)
		}
		done += len(msgs)
	}
	return nil
}

// Partitions returns [0, n).
func Partitions(n int) []int {
	ps := make([]int, n)
	for i := range ps {
		ps[i] = i
	}
	return ps
}
