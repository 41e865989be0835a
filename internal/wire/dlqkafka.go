package wire

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Dead letters in Kafka. The ingest copies every dead letter of the
// partitions it owns to a Kafka topic (DefaultDLQTopic) and does not commit a
// partition's offset past a dead letter until Kafka has it: a dead letter is
// the only copy of a record whose offset is committed, and Redis may lose it.
// See docs/wire.md, "Durability of dead letters".

// DLQExportGroup is the consumer group of the ingest on every dead-letter
// stream: an entry it has acknowledged is in Kafka; one pending in it or not
// yet delivered to it is not, and holds the partition's commit.
const DLQExportGroup = "kbridge-dlq-export"

// DLQExportConsumer is the one consumer name every ingest uses in
// DLQExportGroup, so that the next owner of a partition reads the entries a
// previous owner read and did not export (XREADGROUP ... 0).
const DLQExportConsumer = "ingest"

// DLQReplayedKey is the hash, beside a partition stream, of the dead letters
// of the partition "kbridge dlq replay" handed back (field: the dead
// letter's ref, value: Unix milliseconds), so that replaying from Kafka does
// not hand the same dead letter over twice.
func DLQReplayedKey(stream string) string { return stream + ":dlq:replayed" }

// DLQStubsKey is the hash, beside a partition stream, of the dead letters of
// the partition that the ingest exported as stubs only (field: the dead
// letter's entry ID in the dead-letter stream, value: why). A dead letter
// acknowledged in DLQExportGroup is in Kafka in full unless it is here:
// then Kafka has its coordinates and dead-letter fields, not the record,
// and Redis holds the record's only copy outside its source topic. The
// ingest writes the field and the XACK in one script; entries are never
// removed (a dead letter's ID is never reused).
func DLQStubsKey(stream string) string { return stream + ":dlq:stubs" }

// DefaultDLQTopic is the default template of the Kafka topic that receives a
// topic's dead letters; TopicPlaceholder stands for the topic's name.
const (
	DefaultDLQTopic  = TopicPlaceholder + ".dlq"
	TopicPlaceholder = "{topic}"
)

// DLQTopic returns the dead-letter topic of topic under template.
func DLQTopic(template, topic string) string {
	return strings.ReplaceAll(template, TopicPlaceholder, topic)
}

// Headers of a dead letter in Kafka, after the original record's headers.
// HeaderDLQRef comes first: the headers from it on are kbridge's, those
// before it the record's (even when the record itself carried kbridge.dlq.*
// headers).
const (
	// HeaderDLQRef names the dead letter as "kbridge dlq" does in Redis,
	// <topic>:<partition>/<dead-letter entry ID>: the same dead letter
	// exported twice (an ingest that died between Kafka's acknowledgement
	// and its XACK) has the same ref.
	HeaderDLQRef = "kbridge.dlq.ref"
	// HeaderDLQTopic and HeaderDLQPartition: the partition whose
	// dead-letter stream held it (the record's topic and partition).
	HeaderDLQTopic     = "kbridge.dlq.topic"
	HeaderDLQPartition = "kbridge.dlq.partition"
	// HeaderDLQOffset and HeaderDLQTimestamp: the record's offset and time
	// (Unix milliseconds), absent when the entry is malformed.
	HeaderDLQOffset    = "kbridge.dlq.offset"
	HeaderDLQTimestamp = "kbridge.dlq.timestamp"
	// The dead-letter fields (docs/wire.md), each when present.
	HeaderDLQReason     = "kbridge.dlq.reason"
	HeaderDLQError      = "kbridge.dlq.error"
	HeaderDLQGroup      = "kbridge.dlq.group"
	HeaderDLQConsumer   = "kbridge.dlq.consumer"
	HeaderDLQDeliveries = "kbridge.dlq.deliveries"
	HeaderDLQStream     = "kbridge.dlq.stream"
	HeaderDLQID         = "kbridge.dlq.id"
	HeaderDLQTime       = "kbridge.dlq.time"
	// HeaderDLQMalformed holds why the entry is not a record of the wire
	// contract; its fields then travel as HeaderDLQFieldPrefix headers.
	HeaderDLQMalformed = "kbridge.dlq.malformed"
	// HeaderDLQFieldPrefix + name carries, byte for byte, a field that is
	// neither a record field nor a dead-letter field (every field of a
	// malformed entry).
	HeaderDLQFieldPrefix = "kbridge.dlq.field."
	// HeaderDLQStub marks a stub: a dead letter larger than the ingest's
	// --dlq-max-bytes, exported without the record's key, value, headers
	// and extra fields (its other kbridge headers kept, long values cut).
	// Its value says why and where the record can be read again (its
	// source topic, partition and offset, while that topic's retention
	// keeps it).
	HeaderDLQStub = "kbridge.dlq.stub"
)

var dlqFieldHeaders = []struct{ field, header string }{
	{FieldDLQReason, HeaderDLQReason},
	{FieldDLQError, HeaderDLQError},
	{FieldDLQGroup, HeaderDLQGroup},
	{FieldDLQConsumer, HeaderDLQConsumer},
	{FieldDLQDeliveries, HeaderDLQDeliveries},
	{FieldDLQStream, HeaderDLQStream},
	{FieldDLQID, HeaderDLQID},
	{FieldDLQTime, HeaderDLQTime},
}

var recordFields = []string{FieldTopic, FieldPartition, FieldOffset, FieldTimestamp, FieldKey, FieldValue, FieldHeaders}

// DLQMessage is a dead letter as a Kafka message. A nil Key or Value is a
// Kafka null.
type DLQMessage struct {
	Key, Value []byte
	Headers    []Header
	// Time is when the ingest exported it: the topic's time-based
	// retention counts from then. (Not the worker's dlq_time, which travels
	// in HeaderDLQTime: a worker's clock far ahead would make Kafka refuse
	// the message, one far behind would make retention delete it at once.)
	Time time.Time
}

// DeadLetterRef returns the name "kbridge dlq" gives a dead letter in Redis:
// <topic>:<partition>/<dead-letter entry ID>.
func DeadLetterRef(topic string, partition int, id string) string {
	return topic + ":" + strconv.Itoa(partition) + "/" + id
}

// EncodeDLQMessage turns the entry id of the dead-letter stream of topic's
// partition, with its fields values (as go-redis returns them), into the
// Kafka message the ingest exports. It never fails: an entry that does not
// decode as a record (another program's junk, a malformed record) is
// exported as it is, every field in a header, with HeaderDLQMalformed saying
// why. now is the export time, the message's timestamp.
func EncodeDLQMessage(topic string, partition int, id string, values map[string]any, now time.Time) DLQMessage {
	var m DLQMessage
	rec, err := Decode(values)
	if err == nil && (rec.Topic != topic || rec.Partition != partition) {
		err = fmt.Errorf("%w: the record says %s/%d, its dead-letter stream belongs to %s/%d", ErrMalformed, rec.Topic, rec.Partition, topic, partition)
	}
	extra := map[string]bool{}
	if err == nil {
		m.Key, m.Value = rec.Key, rec.Value
		m.Headers = append(m.Headers, rec.Headers...)
		for f := range values {
			if !IsDLQField(f) && !isRecordField(f) {
				extra[f] = true
			}
		}
	} else {
		for f := range values {
			if !IsDLQField(f) {
				extra[f] = true
			}
		}
	}
	h := func(name, value string) { m.Headers = append(m.Headers, Header{Key: name, Value: []byte(value)}) }
	h(HeaderDLQRef, DeadLetterRef(topic, partition, id))
	h(HeaderDLQTopic, topic)
	h(HeaderDLQPartition, strconv.Itoa(partition))
	if err == nil {
		h(HeaderDLQOffset, strconv.FormatInt(rec.Offset, 10))
		if s, ok := values[FieldTimestamp].(string); ok {
			h(HeaderDLQTimestamp, s)
		}
	} else {
		h(HeaderDLQMalformed, err.Error())
	}
	for _, fh := range dlqFieldHeaders {
		if v, ok := values[fh.field]; ok {
			h(fh.header, fieldString(v))
		}
	}
	names := make([]string, 0, len(extra))
	for f := range extra {
		names = append(names, f)
	}
	sort.Strings(names)
	for _, f := range names {
		h(HeaderDLQFieldPrefix+f, fieldString(values[f]))
	}
	m.Time = now
	return m
}

// DLQMessageSize returns the size kafka-go (v0.4.51) gives m as a message
// (key, value, headers and the record overhead), which its Writer compares
// with its BatchBytes, the ingest's --dlq-max-bytes.
func DLQMessageSize(m DLQMessage) int {
	n := 4 + 1 + 1 + 4 + len(m.Key) + 4 + len(m.Value) + 8 + varIntLen(len(m.Headers))
	for _, h := range m.Headers {
		n += varIntLen(len(h.Key)) + len(h.Key) + varIntLen(len(h.Value)) + len(h.Value)
	}
	return n
}

// varIntLen is the length of n as a zig-zag varint.
func varIntLen(n int) int {
	u := uint64(n) << 1
	l := 1
	for ; u >= 0x80; u >>= 7 {
		l++
	}
	return l
}

// stubValueMax is the longest header value a stub keeps (longer ones are
// cut, marked with "…").
const stubValueMax = 256

// StubDLQMessage returns the stub of m, a dead letter too large to export
// (size bytes, over maxBytes): kbridge's headers of m from HeaderDLQRef on,
// without the record's key, value and headers and without the
// HeaderDLQFieldPrefix ones, values cut to fit, and HeaderDLQStub saying
// why. By DLQMessageSize it fits in maxBytes unless the coordinates alone
// (ref, topic, partition, offset) do not.
func StubDLQMessage(m DLQMessage, size, maxBytes int) DLQMessage {
	start := -1
	for i := len(m.Headers) - 1; i >= 0; i-- {
		if m.Headers[i].Key == HeaderDLQRef {
			start = i
			break
		}
	}
	var hs []Header
	var topic, partition, offset string
	malformed := false
	if start >= 0 {
		for _, h := range m.Headers[start:] {
			switch h.Key {
			case HeaderDLQTopic:
				topic = string(h.Value)
			case HeaderDLQPartition:
				partition = string(h.Value)
			case HeaderDLQOffset:
				offset = string(h.Value)
			case HeaderDLQMalformed:
				malformed = true
			}
			if !strings.HasPrefix(h.Key, HeaderDLQFieldPrefix) {
				hs = append(hs, h)
			}
		}
	}
	why := fmt.Sprintf("dead letter of about %d bytes, over --dlq-max-bytes %d: exported without the record's key, value and headers", size, maxBytes)
	switch {
	case offset != "":
		why += fmt.Sprintf("; the record is offset %s of topic %s partition %s (read it there while the topic's retention keeps it); the dead-letter stream in Redis had it in full when it was exported", offset, topic, partition)
	case malformed:
		why += "; not a record (malformed): its fields are in the dead-letter stream in Redis only"
	}
	// The coordinates and the reason are kept whole; the other values cut.
	keep := map[string]bool{HeaderDLQRef: true, HeaderDLQTopic: true, HeaderDLQPartition: true, HeaderDLQOffset: true,
		HeaderDLQStub: true}
	stub := DLQMessage{Time: m.Time}
	for _, h := range hs {
		v := h.Value
		if !keep[h.Key] {
			v = cut(v, stubValueMax)
		}
		stub.Headers = append(stub.Headers, Header{Key: h.Key, Value: v})
	}
	stub.Headers = append(stub.Headers, Header{Key: HeaderDLQStub, Value: []byte(why)})
	// Still too large (a small maxBytes, long names): drop the optional
	// headers but the dead-letter reason, longest first.
	for DLQMessageSize(stub) > maxBytes {
		longest := -1
		for i, h := range stub.Headers {
			if !keep[h.Key] && h.Key != HeaderDLQReason && (longest < 0 || len(h.Value) > len(stub.Headers[longest].Value)) {
				longest = i
			}
		}
		if longest < 0 {
			break
		}
		stub.Headers = append(stub.Headers[:longest], stub.Headers[longest+1:]...)
	}
	if over := DLQMessageSize(stub) - maxBytes; over > 0 {
		last := &stub.Headers[len(stub.Headers)-1] // the reason of the stub
		last.Value = cut(last.Value, max(len(last.Value)-over-len("…"), 16))
	}
	return stub
}

// cut returns b, or its first n bytes (not splitting a UTF-8 sequence) and
// "…" when it is longer.
func cut(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	i := n
	for i > 0 && !utf8.RuneStart(b[i]) {
		i--
	}
	return append(append([]byte(nil), b[:i]...), "…"...)
}

func isRecordField(f string) bool {
	for _, r := range recordFields {
		if f == r {
			return true
		}
	}
	return false
}

func fieldString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

// ErrNotDeadLetter is returned by DecodeDLQMessage for a Kafka message that
// kbridge did not export (no HeaderDLQRef).
var ErrNotDeadLetter = errors.New("not a kbridge dead letter (no " + HeaderDLQRef + " header)")

// KafkaDeadLetter is a dead letter read back from Kafka.
type KafkaDeadLetter struct {
	// Ref names the dead letter in Redis (HeaderDLQRef); it may be gone
	// from there.
	Ref string
	// Topic and Partition of the record; Offset is -1 when Malformed.
	Topic     string
	Partition int
	Offset    int64
	// Timestamp is the record's time field as it was ("" if none).
	Timestamp string
	Key       []byte
	Value     []byte
	Headers   []Header
	// Malformed says why the entry was not a record; "" when it was.
	Malformed string
	// Stub says why the dead letter was exported as a stub (HeaderDLQStub):
	// without the record's key, value, headers and extra fields. "" for a
	// dead letter exported in full.
	Stub string
	// Fields holds the fields that travelled as HeaderDLQFieldPrefix headers.
	Fields map[string]string
	// Info is read from DLQFields, the dead-letter fields (dlq_*) that
	// travelled as headers, as they were.
	Info      DLQInfo
	DLQFields map[string]string
}

// DecodeDLQMessage reads a dead letter exported by EncodeDLQMessage back.
func DecodeDLQMessage(m DLQMessage) (KafkaDeadLetter, error) {
	d := KafkaDeadLetter{Offset: -1, Fields: map[string]string{}, DLQFields: map[string]string{}}
	start := -1
	for i := len(m.Headers) - 1; i >= 0; i-- {
		if m.Headers[i].Key == HeaderDLQRef {
			start = i
			break
		}
	}
	if start < 0 {
		return d, ErrNotDeadLetter
	}
	d.Key, d.Value = m.Key, m.Value
	d.Headers = append([]Header(nil), m.Headers[:start]...)
	values := map[string]any{}
	var perr error
	for _, h := range m.Headers[start:] {
		v := string(h.Value)
		switch h.Key {
		case HeaderDLQRef:
			d.Ref = v
		case HeaderDLQTopic:
			d.Topic = v
		case HeaderDLQPartition:
			if d.Partition, perr = strconv.Atoi(v); perr != nil {
				return d, fmt.Errorf("dead letter %s: header %s = %q: %w", d.Ref, h.Key, v, perr)
			}
		case HeaderDLQOffset:
			if d.Offset, perr = strconv.ParseInt(v, 10, 64); perr != nil {
				return d, fmt.Errorf("dead letter %s: header %s = %q: %w", d.Ref, h.Key, v, perr)
			}
		case HeaderDLQTimestamp:
			d.Timestamp = v
		case HeaderDLQMalformed:
			d.Malformed = v
		case HeaderDLQStub:
			d.Stub = v
		default:
			if f, ok := strings.CutPrefix(h.Key, HeaderDLQFieldPrefix); ok {
				d.Fields[f] = v
				continue
			}
			for _, fh := range dlqFieldHeaders {
				if h.Key == fh.header {
					values[fh.field] = v
					d.DLQFields[fh.field] = v
				}
			}
		}
	}
	d.Info, _ = DecodeDLQInfo(values)
	if d.Malformed != "" || d.Stub != "" {
		d.Key, d.Value, d.Headers = nil, nil, nil
	}
	return d, nil
}

// EntryFields returns the fields the dead letter had in its dead-letter
// stream: the record's (or, when malformed, the entry's fields as they
// were), then the dead-letter fields. Ready for ReplayFields — but not for
// a stub (Stub != ""), which lacks the record's key, value and headers.
func (d KafkaDeadLetter) EntryFields() map[string]any {
	out := map[string]any{}
	for f, v := range d.Fields {
		out[f] = v
	}
	if d.Malformed == "" {
		out[FieldTopic] = d.Topic
		out[FieldPartition] = strconv.Itoa(d.Partition)
		out[FieldOffset] = strconv.FormatInt(d.Offset, 10)
		if d.Timestamp != "" {
			out[FieldTimestamp] = d.Timestamp
		}
		if d.Key != nil {
			out[FieldKey] = string(d.Key)
		}
		if d.Value != nil {
			out[FieldValue] = string(d.Value)
		}
		if len(d.Headers) > 0 {
			out[FieldHeaders] = encodeHeaders(d.Headers)
		}
	}
	for f, v := range d.DLQFields {
		out[f] = v
	}
	return out
}
