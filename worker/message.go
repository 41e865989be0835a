package worker

import (
	"time"

	"github.com/kbridge/kbridge/internal/wire"
)

// Header is one Kafka record header. Names may repeat; a nil Value is a null
// header value.
type Header struct {
	Key   string
	Value []byte
}

// Message is one record handed to a Handler. The handler must not keep it
// after it returns.
type Message struct {
	// Stream is the key the entry was read from (a partition stream, or its
	// replay stream), ID the entry's ID there.
	Stream string
	ID     string

	Topic     string
	Partition int
	Offset    int64
	// Time is the Kafka record timestamp.
	Time time.Time
	// Key and Value are nil for a Kafka null (a nil Value is a tombstone);
	// empty but non-nil for an empty byte string.
	Key     []byte
	Value   []byte
	Headers []Header

	// Deliveries is how many times the entry has been delivered, this
	// delivery included (1 on the first). It is Redis's count, so it
	// survives worker crashes.
	Deliveries int64

	// Replayed is true for a dead letter handed back by "kbridge dlq
	// replay"; DeadLetterError is then the error it was dead-lettered with.
	Replayed        bool
	DeadLetterError string

	fields map[string]any // the raw entry, for dead-lettering
	held   *heldEntry     // this consumer's hold of the entry (worker.go)
}

func newMessage(stream, id string, values map[string]any, deliveries int64) (*Message, error) {
	m := &Message{Stream: stream, ID: id, Deliveries: deliveries, fields: values}
	r, err := wire.DecodeEntry(stream, id, values) // topic/partition of the stream, ID <offset>-1 (docs/wire.md)
	if err != nil {
		return m, err
	}
	m.Topic, m.Partition, m.Offset, m.Time = r.Topic, r.Partition, r.Offset, r.Time
	m.Key, m.Value = r.Key, r.Value
	if len(r.Headers) > 0 {
		m.Headers = make([]Header, len(r.Headers))
		for i, h := range r.Headers {
			m.Headers[i] = Header{Key: h.Key, Value: h.Value}
		}
	}
	if wire.IsReplayKey(stream) {
		m.Replayed = true
		info, _ := wire.DecodeDLQInfo(values)
		m.DeadLetterError = info.Error
	}
	return m, nil
}
