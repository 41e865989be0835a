package kfetch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"time"
	"unsafe"

	"github.com/segmentio/kafka-go/compress"

	"github.com/kbridge/kbridge/internal/wire"
)

// recordSize is what one decoded record costs besides its bytes, charged to
// the memory budget.
const recordSize = int64(unsafe.Sizeof(wire.Record{}))

// decoder turns batches into wire.Records. Its buffers (decompressed
// records, header slabs) belong to the Result being decoded; it keeps an
// intern table of header names across results, so a repeated header name
// costs no allocation.
type decoder struct {
	topic     string
	partition int
	intern    map[string]string
	reader    bytes.Reader
}

// decoded is what decoding one result produced.
type decoded struct {
	records []wire.Record // capacity recordsCap(records in the batches)
	bufs    [][]byte      // decompression buffers, pooled
	charged int64         // bytes beyond the record set and the records slice
	next    int64         // on error: the first offset not decoded
	err     error
}

// countRecords is the number of records the batches announce.
func countRecords(bs []batch) int {
	n := 0
	for i := range bs {
		n += int(bs[i].count)
	}
	return n
}

// decode appends the records of bs at offsets ≥ from. On a malformed batch
// it stops there: out.next is that batch's first offset (or from), out.err
// says why, and the records before it are kept.
func (d *decoder) decode(bs []batch, from int64, out *decoded) {
	out.records = getRecords(countRecords(bs))
	var slab []wire.Header
	for i := range bs {
		b := &bs[i]
		recs := b.records()
		if b.compression() != 0 {
			buf, err := decompress(b, &d.reader)
			if err != nil {
				out.next, out.err = max(from, b.base), err
				break
			}
			out.bufs = append(out.bufs, buf)
			out.charged += int64(cap(buf))
			recs = buf
		}
		firstTS := int64(binary.BigEndian.Uint64(b.data[offFirstTimestamp:]))
		maxTS := int64(binary.BigEndian.Uint64(b.data[offMaxTimestamp:]))
		logAppend := b.attrs&attrLogAppendTime != 0
		mark := len(out.records)
		var r rawRecord
		p := 0
		var err error
		for j := int32(0); j < b.count; j++ {
			var used int
			if used, err = r.parse(recs[p:], b.base); err != nil {
				break
			}
			p += used
			if r.offset < from {
				continue // a fetch starts at the batch holding the offset asked
			}
			ts := firstTS + r.tsDelta
			if logAppend {
				ts = maxTS // the broker's time, as Kafka's consumer reports it
			}
			rec := wire.Record{
				Topic: d.topic, Partition: d.partition, Offset: r.offset,
				Time: time.UnixMilli(ts), Key: r.key, Value: r.value,
			}
			if r.nHeaders > 0 {
				if cap(slab)-len(slab) < r.nHeaders {
					// slabs grow geometrically: few allocations per result
					slab = make([]wire.Header, 0, max(2*cap(slab), 64, 4*r.nHeaders))
					out.charged += int64(cap(slab)) * int64(unsafe.Sizeof(wire.Header{}))
				}
				start := len(slab)
				if slab, err = d.headers(slab, r.headers, r.nHeaders, r.offset); err != nil {
					break
				}
				rec.Headers = slab[start:len(slab):len(slab)]
			}
			out.records = append(out.records, rec)
		}
		if err != nil {
			// all or nothing per batch: the records of a batch share its
			// fate, so the caller can resume at the batch's first offset
			clear(out.records[mark:])
			out.records = out.records[:mark]
			out.next, out.err = max(from, b.base), err
			break
		}
	}
}

// headers appends n headers read from b to slab.
func (d *decoder) headers(slab []wire.Header, b []byte, n int, offset int64) ([]wire.Header, error) {
	p := 0
	for range n {
		var k, v []byte
		var ok bool
		if k, p, ok = nullableBytes(b, p); !ok || k == nil {
			return slab, corrupt(offset, "bad header name")
		}
		if v, p, ok = nullableBytes(b, p); !ok {
			return slab, corrupt(offset, "bad header value")
		}
		name, ok := d.intern[string(k)] // no allocation for the lookup
		if !ok {
			name = string(k)
			if d.intern == nil {
				d.intern = make(map[string]string)
			}
			if len(d.intern) < 256 {
				d.intern[name] = name
			}
		}
		slab = append(slab, wire.Header{Key: name, Value: v})
	}
	return slab, nil
}

// decompress returns the uncompressed records section of b in a pooled
// buffer (the caller puts it back). rd may be nil.
func decompress(b *batch, rd *bytes.Reader) ([]byte, error) {
	codec := compress.Compression(b.compression()).Codec()
	if codec == nil {
		return nil, corrupt(b.base, "unknown compression codec %d", b.compression())
	}
	if rd == nil {
		rd = new(bytes.Reader)
	}
	rd.Reset(b.records())
	zr := codec.NewReader(rd)
	defer zr.Close()
	buf := getBuf(max(4*len(b.records()), 4<<10))
	n := 0
	for {
		if n == len(buf) {
			bigger := getBuf(2 * len(buf))
			copy(bigger, buf)
			putBuf(buf)
			buf = bigger
		}
		m, err := zr.Read(buf[n:])
		n += m
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			putBuf(buf)
			return nil, corrupt(b.base, "%s decompression: %v", codec.Name(), err)
		}
	}
	return buf[:n], nil
}
