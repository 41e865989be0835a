package kfetch

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go/protocol"
	"github.com/segmentio/kafka-go/protocol/fetch"
	meta "github.com/segmentio/kafka-go/protocol/metadata"
)

// Requests go through kafka.Client.RoundTrip, so they use the cluster's
// Transport: its pooled connections, dialer, TLS, SASL and the API versions
// it negotiated. They implement protocol.RawExchanger: kafka-go hands them
// the connection and they write the request and read the response
// themselves. For fetches this is the point: kafka-go's own decoder of a
// fetch response (protocol.RecordSet) drops each batch's last offset delta
// — which compaction keeps and the fetch position must move past — and
// copies every batch into page buffers; here the record set of each
// partition is read straight into one pooled buffer and parsed by this
// package. For metadata it bypasses the Transport's metadata cache, which
// may lag a leader change by up to its TTL.

var correlation atomic.Int32

// fetchMsg is one multi-partition fetch request to one broker.
type fetchMsg struct {
	broker   int32
	clientID string
	req      fetch.Request
	version  int16
	res      *fetchResp
}

// fetchResp is a fetch response with raw record sets (v4–v11).
type fetchResp struct {
	errorCode int16
	throttle  time.Duration // throttle_time_ms: no request to this broker before it ends (KIP-219)
	topics    []respTopic
	bytes     int64 // record set bytes
}

type respTopic struct {
	topic      string
	partitions []respPartition
}

type respPartition struct {
	partition int32
	errorCode int16
	hwm       int64
	lso       int64
	logStart  int64
	aborted   []abortedTxn
	// redirected says the broker named a preferred read replica (v11,
	// KIP-392: replica.selector.class), broker ID replica, and so skipped
	// the read: no records, whatever the partition holds.
	redirected bool
	replica    int32
	records    []byte // pooled buffer, nil if none
}

func (m *fetchMsg) ApiKey() protocol.ApiKey { return protocol.Fetch }

// Broker routes the request to the leader this package found.
func (m *fetchMsg) Broker(c protocol.Cluster) (protocol.Broker, error) {
	b, ok := c.Brokers[m.broker]
	if !ok {
		return b, fmt.Errorf("broker %d is not (yet) in the client's metadata", m.broker)
	}
	return b, nil
}

// Required records the Fetch version negotiated on the connection (kafka-go
// supports up to v11) and asks for the raw exchange.
func (m *fetchMsg) Required(versions map[protocol.ApiKey]int16) bool {
	m.version = versions[protocol.Fetch]
	return true
}

func (m *fetchMsg) RawExchange(rw io.ReadWriter) (protocol.Message, error) {
	if m.version < 4 || m.version > 11 {
		if m.version < 4 {
			return nil, ErrBrokerTooOld
		}
		m.version = 11
	}
	id := correlation.Add(1)
	if err := protocol.WriteRequest(rw, m.version, id, m.clientID, &m.req); err != nil {
		return nil, err
	}
	res, err := readFetchResponse(rw, m.version, id)
	if err != nil {
		return nil, err
	}
	m.res = res
	return res, nil
}

func (r *fetchResp) ApiKey() protocol.ApiKey { return protocol.Fetch }

// release returns the record set buffers of a response nobody will use.
func (r *fetchResp) release() {
	for i := range r.topics {
		for j := range r.topics[i].partitions {
			putBuf(r.topics[i].partitions[j].records)
			r.topics[i].partitions[j].records = nil
		}
	}
}

// reader reads big-endian primitives from a size-prefixed message, keeping
// count of what is left so the connection stays in step whatever happens.
type reader struct {
	r      io.Reader
	remain int
	err    error
	b      [8]byte
}

func (d *reader) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *reader) read(n int) []byte {
	if d.err != nil {
		return d.b[:n]
	}
	if n > d.remain {
		d.fail(fmt.Errorf("fetch response: field of %d bytes with %d left", n, d.remain))
		return d.b[:n]
	}
	if _, err := io.ReadFull(d.r, d.b[:n]); err != nil {
		d.fail(err)
	}
	d.remain -= n
	return d.b[:n]
}

func (d *reader) int16() int16 { return int16(binary.BigEndian.Uint16(d.read(2))) }
func (d *reader) int32() int32 { return int32(binary.BigEndian.Uint32(d.read(4))) }
func (d *reader) int64() int64 { return int64(binary.BigEndian.Uint64(d.read(8))) }

func (d *reader) count() int {
	n := d.int32()
	if n < -1 || int(n) > d.remain {
		d.fail(fmt.Errorf("fetch response: array of %d with %d bytes left", n, d.remain))
		return 0
	}
	return max(int(n), 0)
}

func (d *reader) string() string {
	n := int(d.int16())
	if d.err != nil || n <= 0 {
		return ""
	}
	if n > d.remain {
		d.fail(fmt.Errorf("fetch response: string of %d with %d bytes left", n, d.remain))
		return ""
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(d.r, b); err != nil {
		d.fail(err)
	}
	d.remain -= n
	return string(b)
}

// bytes reads a nullable int32-length byte string into a pooled buffer.
func (d *reader) bytes() []byte {
	n := int(d.int32())
	if d.err != nil || n <= 0 {
		return nil
	}
	if n > d.remain {
		d.fail(fmt.Errorf("fetch response: record set of %d with %d bytes left", n, d.remain))
		return nil
	}
	b := getBuf(n)
	if _, err := io.ReadFull(d.r, b); err != nil {
		putBuf(b)
		d.fail(err)
		return nil
	}
	d.remain -= n
	return b
}

func (d *reader) discard() {
	if d.err == nil && d.remain > 0 {
		_, err := io.CopyN(io.Discard, d.r, int64(d.remain))
		d.fail(err)
		d.remain = 0
	}
}

// readFetchResponse reads a Fetch response v4–v11 (none of them flexible).
func readFetchResponse(r io.Reader, version int16, id int32) (*fetchResp, error) {
	var size [4]byte
	if _, err := io.ReadFull(r, size[:]); err != nil {
		return nil, err
	}
	d := &reader{r: r, remain: int(int32(binary.BigEndian.Uint32(size[:])))}
	if got := d.int32(); d.err == nil && got != id {
		return nil, fmt.Errorf("fetch response: correlation id %d, want %d", got, id)
	}
	res := &fetchResp{}
	res.throttle = time.Duration(max(d.int32(), 0)) * time.Millisecond
	if version >= 7 {
		res.errorCode = d.int16()
		d.int32() // session id
	}
	res.topics = make([]respTopic, d.count())
	for i := range res.topics {
		t := &res.topics[i]
		t.topic = d.string()
		t.partitions = make([]respPartition, d.count())
		for j := range t.partitions {
			p := &t.partitions[j]
			p.partition = d.int32()
			p.errorCode = d.int16()
			p.hwm = d.int64()
			p.lso = d.int64()
			p.logStart = -1
			if version >= 5 {
				p.logStart = d.int64()
			}
			if n := d.count(); n > 0 {
				p.aborted = make([]abortedTxn, n)
				for k := range p.aborted {
					p.aborted[k] = abortedTxn{producerID: d.int64(), firstOffset: d.int64()}
				}
			}
			if version >= 11 {
				p.replica = d.int32()
				p.redirected = p.replica >= 0
			}
			p.records = d.bytes()
			res.bytes += int64(len(p.records))
		}
	}
	d.discard()
	if d.err != nil {
		res.release()
		return nil, fmt.Errorf("read fetch response: %w", d.err)
	}
	return res, nil
}

// metaMsg is a metadata request that skips the Transport's cache.
type metaMsg struct {
	clientID string
	req      meta.Request
	version  int16
}

// metaResp wraps the response: kafka-go's Transport post-processes a
// *meta.Response as the answer to a *meta.Request, which this is not.
type metaResp struct{ res *meta.Response }

func (m *metaMsg) ApiKey() protocol.ApiKey  { return protocol.Metadata }
func (r *metaResp) ApiKey() protocol.ApiKey { return protocol.Metadata }

func (m *metaMsg) Required(versions map[protocol.ApiKey]int16) bool {
	m.version = versions[protocol.Metadata]
	return true
}

func (m *metaMsg) RawExchange(rw io.ReadWriter) (protocol.Message, error) {
	id := correlation.Add(1)
	if err := protocol.WriteRequest(rw, m.version, id, m.clientID, &m.req); err != nil {
		return nil, err
	}
	got, msg, err := protocol.ReadResponse(rw, protocol.Metadata, m.version)
	if err != nil {
		return nil, err
	}
	if got != id {
		return nil, fmt.Errorf("metadata response: correlation id %d, want %d", got, id)
	}
	res, ok := msg.(*meta.Response)
	if !ok {
		return nil, fmt.Errorf("metadata response: unexpected %T", msg)
	}
	return &metaResp{res: res}, nil
}

var (
	_ protocol.RawExchanger  = (*fetchMsg)(nil)
	_ protocol.BrokerMessage = (*fetchMsg)(nil)
	_ protocol.RawExchanger  = (*metaMsg)(nil)
)
