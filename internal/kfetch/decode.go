package kfetch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"time"
	"unsafe"

	"github.com/segmentio/kafka-go/compress"

	"github.com/kbridge/kbridge/internal/wire"
)

// recordSize and headerSize are what one decoded record or header costs
// besides its bytes, charged to the memory budget.
const (
	recordSize = int64(unsafe.Sizeof(wire.Record{}))
	headerSize = int64(unsafe.Sizeof(wire.Header{}))
)

// interner keeps one string per header name seen on a partition, so a
// repeated header name costs no allocation. It is shared by the Results of
// the partition; a caller reading two of them at once from two goroutines
// gets fresh strings for the one that finds it busy.
type interner struct {
	mu sync.Mutex
	m  map[string]string
}

func (in *interner) get(b []byte) string {
	if !in.mu.TryLock() {
		return string(b)
	}
	defer in.mu.Unlock()
	if s, ok := in.m[string(b)]; ok { // no allocation for the lookup
		return s
	}
	s := string(b)
	if in.m == nil {
		in.m = make(map[string]string)
	}
	if len(in.m) < 256 {
		in.m[s] = s
	}
	return s
}

// cursor decodes the deliverable batches of a result lazily, a chunk of
// records at a time, as Kafka's consumer does: only the batch being read is
// decompressed, into one buffer reused from batch to batch.
type cursor struct {
	topic     string
	partition int
	from      int64 // records below it are skipped
	batches   []batch
	bi        int    // next batch
	recs      []byte // undecoded records of the current batch
	left      int32  // records left in the current batch
	b         *batch // current batch
	zbuf      []byte // decompression buffer (pooled)
	chunk     []wire.Record
	slab      []wire.Header
	intern    *interner
	reader    bytes.Reader
	last      int64 // offset of the last record returned
	aliasZ    bool  // the chunk being built holds records in zbuf
	// maxBatch is the most one batch may take decompressed (0: no
	// limit): beyond it, the batch is reported corrupt rather than blow
	// the memory budget
	maxBatch int
}

// read returns the next records, at most limit (≥ 1). grow is told of
// every buffer growth, in bytes. At the end it returns an empty slice; on a
// malformed record it returns the records before it and the error.
func (c *cursor) read(limit int, grow func(int64)) ([]wire.Record, error) {
	if cap(c.chunk) < limit {
		want := min(limit, c.remaining())
		if want > cap(c.chunk) {
			old := int64(cap(c.chunk)) * recordSize
			putRecords(c.chunk)
			c.chunk = getRecords(want)
			grow(int64(cap(c.chunk))*recordSize - old)
		}
	}
	out := c.chunk[:0]
	c.slab = c.slab[:0]
	c.aliasZ = false
	for len(out) < limit && len(out) < cap(out) {
		if c.left == 0 {
			if c.bi == len(c.batches) {
				break
			}
			if c.aliasZ && c.batches[c.bi].compression() != 0 {
				break // decompressing it would overwrite records of this chunk
			}
			if err := c.open(&c.batches[c.bi], grow); err != nil {
				return out, err
			}
			c.bi++
			continue
		}
		var r rawRecord
		used, err := r.parse(c.recs, c.b.base)
		if err != nil {
			c.left = 0
			c.bi = len(c.batches)
			return out, err
		}
		c.recs = c.recs[used:]
		c.left--
		if r.offset < c.from {
			continue // a fetch starts at the batch holding the offset asked
		}
		ts := int64(binary.BigEndian.Uint64(c.b.data[offFirstTimestamp:])) + r.tsDelta
		if c.b.attrs&attrLogAppendTime != 0 {
			// the broker's time, as Kafka's consumer reports it
			ts = int64(binary.BigEndian.Uint64(c.b.data[offMaxTimestamp:]))
		}
		rec := wire.Record{
			Topic: c.topic, Partition: c.partition, Offset: r.offset,
			Time: time.UnixMilli(ts), Key: r.key, Value: r.value,
		}
		if r.nHeaders > 0 {
			if cap(c.slab)-len(c.slab) < r.nHeaders {
				// a new slab: the records already in this chunk keep
				// pointing into the old one
				old := int64(cap(c.slab)) * headerSize
				c.slab = make([]wire.Header, 0, max(2*cap(c.slab), 64, 4*r.nHeaders))
				grow(int64(cap(c.slab))*headerSize - old)
			}
			start := len(c.slab)
			if c.slab, err = c.headers(c.slab, r.headers, r.nHeaders, r.offset); err != nil {
				c.left = 0
				c.bi = len(c.batches)
				return out, err
			}
			rec.Headers = c.slab[start:len(c.slab):len(c.slab)]
		}
		out = append(out, rec)
		c.last = r.offset
		c.aliasZ = c.aliasZ || c.b.compression() != 0
	}
	return out, nil
}

// remaining is how many records the batches not yet read announce.
func (c *cursor) remaining() int {
	n := int(c.left)
	for i := c.bi; i < len(c.batches); i++ {
		n += int(c.batches[i].count)
	}
	return n
}

// open starts reading batch b, decompressing it if needed.
func (c *cursor) open(b *batch, grow func(int64)) error {
	c.b, c.left, c.recs = b, b.count, b.records()
	if b.compression() == 0 {
		return nil
	}
	old := int64(cap(c.zbuf))
	limit := c.maxBatch
	if limit <= 0 {
		limit = math.MaxInt32
	}
	buf, err := decompress(b, &c.reader, c.zbuf, limit)
	c.zbuf = buf // decompress may have swapped and pooled the old one
	grow(int64(cap(buf)) - old)
	if err != nil {
		c.left = 0
		c.bi = len(c.batches)
		return err
	}
	c.recs = buf
	return nil
}

// headers appends n headers read from b to slab.
func (c *cursor) headers(slab []wire.Header, b []byte, n int, offset int64) ([]wire.Header, error) {
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
		slab = append(slab, wire.Header{Key: c.intern.get(k), Value: v})
	}
	return slab, nil
}

// release returns the cursor's buffers to the pools.
func (c *cursor) release() {
	putBuf(c.zbuf)
	putRecords(c.chunk)
	*c = cursor{}
}

// decompress returns the uncompressed records section of b in a buffer of
// the pools: buf if it is large enough, else a new one (buf is then given
// back to the pools). The buffer returned replaces buf also on error. A
// batch that takes more than limit bytes decompressed is reported as
// corrupt. rd may be nil.
func decompress(b *batch, rd *bytes.Reader, buf []byte, limit int) ([]byte, error) {
	codec := compress.Compression(b.compression()).Codec()
	if codec == nil {
		return buf, corrupt(b.base, "unknown compression codec %d", b.compression())
	}
	if rd == nil {
		rd = new(bytes.Reader)
	}
	rd.Reset(b.records())
	zr := codec.NewReader(rd)
	defer zr.Close()
	if want := min(max(4*len(b.records()), 4<<10), limit+1); cap(buf) < want {
		putBuf(buf)
		buf = getBuf(want)
	}
	// read at most limit+1 bytes: one beyond the limit is enough to know
	buf = buf[:min(cap(buf), limit+1)]
	n := 0
	for {
		if n == len(buf) {
			if n > limit {
				return buf[:0], tooLarge(b, codec.Name(), limit)
			}
			bigger := getBuf(min(2*len(buf), limit+1))
			copy(bigger, buf)
			putBuf(buf)
			buf = bigger[:min(cap(bigger), limit+1)]
		}
		m, err := zr.Read(buf[n:])
		n += m
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return buf[:0], corrupt(b.base, "%s decompression: %v", codec.Name(), err)
		}
	}
	if n > limit {
		return buf[:0], tooLarge(b, codec.Name(), limit)
	}
	return buf[:n], nil
}

// tooLarge is the error of batch b that decompresses to more than limit
// bytes.
func tooLarge(b *batch, codec string, limit int) error {
	return &CorruptError{Offset: b.base, TooLarge: true, Limit: int64(limit), Compressed: len(b.data),
		Reason: fmt.Sprintf("%s batch of %d bytes decompresses to more than %d bytes, the most one batch may take (BatchMaxBytes)",
			codec, len(b.data), limit)}
}
