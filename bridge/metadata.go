package bridge

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
)

// The ingest reads topic metadata itself, with a Metadata request of
// version 10 to 12 written and read here and sent through the Client's
// Transport (its connections, TLS and SASL) as a protocol.RawExchanger:
// kafka-go's own Metadata stops at version 8, which has no topic IDs
// (KIP-516, needed to tell a recreated topic from the old one, issue 7
// point 6), and Client.Metadata answers from the Transport's cache, which
// lists a topic the user may not describe as unknown instead of saying so,
// and lags topic creation and deletion by up to its TTL. A broker older
// than Kafka 2.8 (no Metadata v10) gets kafka-go's request: no topic IDs.

// topicMeta is what the brokers say about one topic.
type topicMeta struct {
	Name string
	// Err is the topic's error: kafka.UnknownTopicOrPartition when it does
	// not exist, kafka.TopicAuthorizationFailed when the user may not
	// describe it; nil when it exists.
	Err error
	// ID is the topic's ID (zero when the broker does not give it).
	ID topicID
	// Partitions is the number of partitions.
	Partitions int
}

// topicID is a Kafka topic ID (a UUID), or zero when unknown.
type topicID [16]byte

func (id topicID) String() string {
	if id.IsZero() {
		return ""
	}
	return hex.EncodeToString(id[:])
}

// IsZero reports whether the ID is unknown.
func (id topicID) IsZero() bool { return id == topicID{} }

func parseTopicID(s string) topicID {
	var id topicID
	if b, err := hex.DecodeString(s); err == nil && len(b) == len(id) {
		copy(id[:], b)
	}
	return id
}

// metadataVersions caches the Metadata version the brokers support (0: not
// asked yet).
type metadataVersions struct {
	mu      sync.Mutex
	version int16
}

// metadata returns what the brokers say about topics, in their order.
func (in *Ingest) metadata(ctx context.Context, topics []string) ([]topicMeta, error) {
	v, err := in.metadataVersion(ctx)
	if err != nil {
		return nil, err
	}
	if v < 10 {
		res, err := in.client.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
		if err != nil {
			return nil, err
		}
		byName := map[string]topicMeta{}
		for _, t := range res.Topics {
			byName[t.Name] = topicMeta{Name: t.Name, Err: t.Error, Partitions: len(t.Partitions)}
		}
		return orderTopics(topics, byName), nil
	}
	msg := &metadataMsg{version: v, topics: topics}
	res, err := in.client.Transport.RoundTrip(ctx, in.client.Addr, msg)
	if err != nil {
		return nil, fmt.Errorf("kafka metadata: %w", err)
	}
	r, ok := res.(*metadataResp)
	if !ok {
		return nil, fmt.Errorf("kafka metadata: unexpected %T", res)
	}
	byName := map[string]topicMeta{}
	for _, t := range r.topics {
		byName[t.Name] = t
	}
	return orderTopics(topics, byName), nil
}

func orderTopics(topics []string, byName map[string]topicMeta) []topicMeta {
	out := make([]topicMeta, len(topics))
	for i, name := range topics {
		t, ok := byName[name]
		if !ok {
			t = topicMeta{Name: name, Err: kafka.UnknownTopicOrPartition}
		}
		out[i] = t
	}
	return out
}

// metadataVersion returns the highest Metadata version up to 12 that the
// brokers support, asking them once.
func (in *Ingest) metadataVersion(ctx context.Context) (int16, error) {
	in.metaVersions.mu.Lock()
	defer in.metaVersions.mu.Unlock()
	if in.metaVersions.version > 0 {
		return in.metaVersions.version, nil
	}
	res, err := in.client.ApiVersions(ctx, &kafka.ApiVersionsRequest{})
	if err == nil {
		err = res.Error
	}
	if err != nil {
		return 0, fmt.Errorf("kafka api versions: %w", err)
	}
	v := int16(1)
	for _, k := range res.ApiKeys {
		if k.ApiKey == int(protocol.Metadata) {
			v = int16(min(k.MaxVersion, 12))
		}
	}
	if v < 10 {
		in.log.Warn("the Kafka brokers are older than 2.8 (no Metadata v10): topic IDs are unknown, so a recreated topic is noticed only by its offsets", "metadata_version", v)
	}
	in.metaVersions.version = v
	return v, nil
}

var metadataCorrelation atomic.Int32

// metadataMsg is a Metadata request v10–v12 (flexible versions).
type metadataMsg struct {
	version int16
	topics  []string
}

// metadataResp is its answer.
type metadataResp struct {
	topics []topicMeta
}

func (m *metadataMsg) ApiKey() protocol.ApiKey  { return protocol.Metadata }
func (r *metadataResp) ApiKey() protocol.ApiKey { return protocol.Metadata }

func (m *metadataMsg) Required(map[protocol.ApiKey]int16) bool { return true }

func (m *metadataMsg) RawExchange(rw io.ReadWriter) (protocol.Message, error) {
	id := metadataCorrelation.Add(1)
	if _, err := rw.Write(m.encode(id)); err != nil {
		return nil, err
	}
	var size [4]byte
	if _, err := io.ReadFull(rw, size[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(size[:]))
	if n < 4 || n > 64<<20 {
		return nil, fmt.Errorf("metadata response of %d bytes", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(rw, body); err != nil {
		return nil, err
	}
	return decodeMetadata(body, m.version, id)
}

// encode writes the request: header v2, then the body of Metadata v10–v12.
func (m *metadataMsg) encode(correlation int32) []byte {
	var b []byte
	b = binary.BigEndian.AppendUint32(b, 0) // size, set below
	b = binary.BigEndian.AppendUint16(b, uint16(protocol.Metadata))
	b = binary.BigEndian.AppendUint16(b, uint16(m.version))
	b = binary.BigEndian.AppendUint32(b, uint32(correlation))
	const clientID = "kbridge"
	b = binary.BigEndian.AppendUint16(b, uint16(len(clientID)))
	b = append(b, clientID...)
	b = append(b, 0) // header tagged fields
	b = binary.AppendUvarint(b, uint64(len(m.topics)+1))
	for _, t := range m.topics {
		b = append(b, make([]byte, 16)...) // topic ID: none, ask by name
		b = binary.AppendUvarint(b, uint64(len(t)+1))
		b = append(b, t...)
		b = append(b, 0) // tagged fields
	}
	b = append(b, 0) // allow_auto_topic_creation: never create a topic
	if m.version <= 10 {
		b = append(b, 0) // include_cluster_authorized_operations
	}
	b = append(b, 0) // include_topic_authorized_operations
	b = append(b, 0) // tagged fields
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

// decoder reads a flexible-version response body.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return make([]byte, n)
	}
	if n < 0 || n > len(d.b) {
		d.err = errors.New("metadata response: truncated")
		return make([]byte, max(n, 0))
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) int16() int16 { return int16(binary.BigEndian.Uint16(d.take(2))) }
func (d *decoder) int32() int32 { return int32(binary.BigEndian.Uint32(d.take(4))) }

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errors.New("metadata response: bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// compactLen reads a compact array or string length (-1: null).
func (d *decoder) compactLen() int {
	n := int(d.uvarint()) - 1
	if n > len(d.b) {
		d.err = errors.New("metadata response: length beyond the message")
		return 0
	}
	return n
}

func (d *decoder) compactString() string {
	n := d.compactLen()
	if n <= 0 {
		return ""
	}
	return string(d.take(n))
}

func (d *decoder) tags() {
	for n := d.uvarint(); n > 0 && d.err == nil; n-- {
		d.uvarint()              // tag
		d.take(int(d.uvarint())) // value
	}
}

func (d *decoder) int32Array() {
	if n := d.compactLen(); n > 0 {
		d.take(4 * n)
	}
}

// decodeMetadata reads a Metadata response v10–v12 (header v1).
func decodeMetadata(body []byte, version int16, id int32) (*metadataResp, error) {
	d := &decoder{b: body}
	if got := d.int32(); d.err == nil && got != id {
		return nil, fmt.Errorf("metadata response: correlation id %d, want %d", got, id)
	}
	d.tags()
	d.int32() // throttle
	for n := d.compactLen(); n > 0 && d.err == nil; n-- {
		d.int32()         // node id
		d.compactString() // host
		d.int32()         // port
		d.compactString() // rack
		d.tags()
	}
	d.compactString() // cluster id
	d.int32()         // controller id
	res := &metadataResp{}
	for n := d.compactLen(); n > 0 && d.err == nil; n-- {
		var t topicMeta
		if code := d.int16(); code != 0 {
			t.Err = kafka.Error(code)
		}
		t.Name = d.compactString()
		copy(t.ID[:], d.take(16))
		d.take(1) // is_internal
		for p := d.compactLen(); p > 0 && d.err == nil; p-- {
			d.int16() // partition error (a leader missing: the fetch retries)
			d.int32() // index
			d.int32() // leader
			d.int32() // leader epoch
			d.int32Array()
			d.int32Array()
			d.int32Array()
			d.tags()
			t.Partitions++
		}
		d.int32() // topic authorized operations
		d.tags()
		res.topics = append(res.topics, t)
	}
	if version <= 10 {
		d.int32() // cluster authorized operations
	}
	d.tags()
	if d.err != nil {
		return nil, d.err
	}
	return res, nil
}

var _ protocol.RawExchanger = (*metadataMsg)(nil)
