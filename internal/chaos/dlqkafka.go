package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/internal/wire"
)

// KafkaDeadLetters reads the whole dead-letter topic dlqTopic (the ingest
// exports every dead letter there before it commits past it) and returns
// the partition/offset of each dead letter of topic it holds. A topic that
// does not exist holds none.
func KafkaDeadLetters(ctx context.Context, cl *kafka.Client, dlqTopic, topic string) (map[pOff]bool, error) {
	out := map[pOff]bool{}
	md, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{dlqTopic}})
	if err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", dlqTopic, err)
	}
	if len(md.Topics) != 1 || errors.Is(md.Topics[0].Error, kafka.UnknownTopicOrPartition) {
		return out, nil
	}
	if md.Topics[0].Error != nil {
		return nil, fmt.Errorf("metadata of %s: %w", dlqTopic, md.Topics[0].Error)
	}
	for _, p := range md.Topics[0].Partitions {
		for off := int64(0); ; {
			fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			res, err := cl.Fetch(fctx, &kafka.FetchRequest{Topic: dlqTopic, Partition: p.ID, Offset: off,
				MinBytes: 1, MaxBytes: 4 << 20, MaxWait: 100 * time.Millisecond})
			cancel()
			if err == nil {
				err = res.Error
			}
			if err != nil {
				return nil, fmt.Errorf("fetch %s/%d at %d: %w", dlqTopic, p.ID, off, err)
			}
			if off >= res.HighWatermark {
				break
			}
			read := 0
			for {
				r, err := res.Records.ReadRecord()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return nil, fmt.Errorf("read %s/%d: %w", dlqTopic, p.ID, err)
				}
				off = max(off, r.Offset+1)
				read++
				m := wire.DLQMessage{}
				if m.Key, err = kafka.ReadAll(r.Key); err != nil {
					return nil, err
				}
				if m.Value, err = kafka.ReadAll(r.Value); err != nil {
					return nil, err
				}
				for _, h := range r.Headers {
					m.Headers = append(m.Headers, wire.Header{Key: h.Key, Value: h.Value})
				}
				d, err := wire.DecodeDLQMessage(m)
				if err != nil || d.Topic != topic || d.Offset < 0 {
					continue
				}
				out[pOff{d.Partition, d.Offset}] = true
			}
			if read == 0 {
				// Nothing readable at off (a control batch, a gap): step on.
				off++
			}
		}
	}
	return out, nil
}
