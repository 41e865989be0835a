package kfetch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/segmentio/kafka-go/compress"

	"github.com/kbridge/kbridge/internal/wire"
)

// tRecord and tBatch describe a record batch v2 to encode by hand.
type tRecord struct {
	delta   int    // offset delta
	key     []byte // nil: null
	value   []byte // nil: null
	headers []wire.Header
	tsDelta int64
}

type tBatch struct {
	base        int64
	lastDelta   int32 // 0: the last record's delta
	pid         int64 // 0 means -1 (no producer ID); use pid > 0 for transactional
	txn         bool
	control     int16 // 0: data batch; 1: commit marker; 2: abort marker
	compression int8
	logAppend   bool
	firstTS     int64
	maxTS       int64
	records     []tRecord
	magic       int8 // 0 means 2
}

func appendVarint(b []byte, v int64) []byte { return binary.AppendVarint(b, v) }

func appendNullable(b, v []byte) []byte {
	if v == nil {
		return appendVarint(b, -1)
	}
	return append(appendVarint(b, int64(len(v))), v...)
}

func encodeRecord(r tRecord) []byte {
	var body []byte
	body = append(body, 0) // attributes
	body = appendVarint(body, r.tsDelta)
	body = appendVarint(body, int64(r.delta))
	body = appendNullable(body, r.key)
	body = appendNullable(body, r.value)
	body = appendVarint(body, int64(len(r.headers)))
	for _, h := range r.headers {
		body = appendNullable(body, []byte(h.Key))
		body = appendNullable(body, h.Value)
	}
	return append(appendVarint(nil, int64(len(body))), body...)
}

// encodeBatch builds the bytes of b, CRC included.
func encodeBatch(t testing.TB, b tBatch) []byte {
	t.Helper()
	recs := b.records
	if b.control != 0 {
		typ := int16(1) // commit
		if b.control == 2 {
			typ = 0 // abort
		}
		key := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, 0), uint16(typ))
		val := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint16(nil, 0), 7)
		recs = []tRecord{{delta: 0, key: key, value: val}}
	}
	var raw []byte
	for _, r := range recs {
		raw = append(raw, encodeRecord(r)...)
	}
	if b.compression != 0 {
		var buf bytes.Buffer
		w := compress.Compression(b.compression).Codec().NewWriter(&buf)
		if _, err := w.Write(raw); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		raw = buf.Bytes()
	}
	last := b.lastDelta
	if last == 0 && len(recs) > 0 {
		last = int32(recs[len(recs)-1].delta)
	}
	attrs := int16(b.compression)
	if b.logAppend {
		attrs |= attrLogAppendTime
	}
	if b.txn {
		attrs |= attrTransactional
	}
	if b.control != 0 {
		attrs |= attrControl | attrTransactional
	}
	pid := b.pid
	if pid == 0 {
		pid = -1
	}
	magic := b.magic
	if magic == 0 {
		magic = 2
	}
	h := make([]byte, batchHeaderLen)
	binary.BigEndian.PutUint64(h[0:], uint64(b.base))
	binary.BigEndian.PutUint32(h[12:], 0) // leader epoch
	h[offMagic] = byte(magic)
	binary.BigEndian.PutUint16(h[offAttributes:], uint16(attrs))
	binary.BigEndian.PutUint32(h[offLastOffsetDelta:], uint32(last))
	binary.BigEndian.PutUint64(h[offFirstTimestamp:], uint64(b.firstTS))
	binary.BigEndian.PutUint64(h[offMaxTimestamp:], uint64(b.maxTS))
	binary.BigEndian.PutUint64(h[offProducerID:], uint64(pid))
	binary.BigEndian.PutUint16(h[51:], 0) // producer epoch
	binary.BigEndian.PutUint32(h[53:], 0) // base sequence
	binary.BigEndian.PutUint32(h[offRecordCount:], uint32(len(recs)))
	out := append(h, raw...)
	binary.BigEndian.PutUint32(out[offLength:], uint32(len(out)-12))
	binary.BigEndian.PutUint32(out[offCRC:], crc32.Checksum(out[offAttributes:], castagnoli))
	return out
}

// recs makes n records at deltas 0..n-1 with key k<offset>, value v<offset>.
func recs(base int64, deltas ...int) []tRecord {
	out := make([]tRecord, len(deltas))
	for i, d := range deltas {
		o := base + int64(d)
		out[i] = tRecord{delta: d, key: fmt.Appendf(nil, "k%d", o), value: fmt.Appendf(nil, "v%d", o)}
	}
	return out
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

func set(t testing.TB, bs ...tBatch) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, encodeBatch(t, b)...)
	}
	return out
}

// run scans and decodes like a fetch does, reading in chunks of 2 (so
// chunks cross batch boundaries) and copying what it reads.
func run(t testing.TB, data []byte, from int64, rc bool, aborted []abortedTxn) ([]wire.Record, scanOut, error) {
	t.Helper()
	var out scanOut
	scan(data, from, rc, aborted, &out)
	var in interner
	c := cursor{topic: "t", partition: 0, from: from, batches: out.batches, intern: &in, last: from - 1}
	defer c.release()
	var got []wire.Record
	err := out.err
	for {
		recs, rerr := c.read(2, func(int64) {})
		got = append(got, copyRecords(recs)...)
		if rerr != nil {
			out.next, err = max(from, c.last+1), rerr
			break
		}
		if len(recs) == 0 {
			break
		}
	}
	return got, out, err
}

// copyRecords deep-copies records that alias a Result's buffers.
func copyRecords(rs []wire.Record) []wire.Record {
	out := make([]wire.Record, len(rs))
	for i, r := range rs {
		out[i] = r
		out[i].Key = bytes.Clone(r.Key)
		out[i].Value = bytes.Clone(r.Value)
		out[i].Headers = nil
		for _, h := range r.Headers {
			out[i].Headers = append(out[i].Headers, wire.Header{Key: h.Key, Value: bytes.Clone(h.Value)})
		}
	}
	return out
}

func offsets(rs []wire.Record) []int64 {
	o := make([]int64, len(rs))
	for i, r := range rs {
		o[i] = r.Offset
	}
	return o
}

func TestScanDecode(t *testing.T) {
	const pidA, pidB = 7, 8
	cases := []struct {
		name    string
		set     []byte
		from    int64
		rc      bool
		aborted []abortedTxn
		want    []int64 // offsets delivered
		next    int64
		skipped int64 // aborted records
		control int
	}{
		{name: "plain", set: set(t, tBatch{base: 0, records: recs(0, 0, 1, 2)}), want: []int64{0, 1, 2}, next: 3},
		{name: "from mid batch", from: 1, set: set(t, tBatch{base: 0, records: recs(0, 0, 1, 2)}), want: []int64{1, 2}, next: 3},
		{name: "two batches with a compaction gap", set: set(t,
			tBatch{base: 0, records: recs(0, 0, 1, 2)}, tBatch{base: 10, records: recs(10, 0, 1, 2)}),
			want: []int64{0, 1, 2, 10, 11, 12}, next: 13},
		{name: "compacted batch tail: last offset survives", from: 10, set: set(t,
			tBatch{base: 10, lastDelta: 9, records: recs(10, 0, 4)}), want: []int64{10, 14}, next: 20},
		{name: "fetch inside a compacted tail moves on", from: 15, set: set(t,
			tBatch{base: 10, lastDelta: 9, records: recs(10, 0, 4)}), want: nil, next: 20},
		{name: "empty batch kept by compaction", from: 10, set: set(t,
			tBatch{base: 10, lastDelta: 4, pid: pidA, records: nil}), want: nil, next: 15},
		{name: "commit marker at the tail", rc: true, set: set(t,
			tBatch{base: 0, pid: pidA, txn: true, records: recs(0, 0, 1, 2)},
			tBatch{base: 3, pid: pidA, control: 1}), want: []int64{0, 1, 2}, next: 4, control: 1},
		{name: "fetch at a commit marker", rc: true, from: 3, set: set(t,
			tBatch{base: 3, pid: pidA, control: 1}), want: nil, next: 4, control: 1},
		{name: "aborted transaction, read_committed", rc: true, aborted: []abortedTxn{{pidA, 0}}, set: set(t,
			tBatch{base: 0, pid: pidA, txn: true, records: recs(0, 0, 1, 2)},
			tBatch{base: 3, pid: pidA, control: 2}), want: nil, next: 4, skipped: 3, control: 1},
		{name: "aborted transaction, read_uncommitted", rc: false, set: set(t,
			tBatch{base: 0, pid: pidA, txn: true, records: recs(0, 0, 1, 2)},
			tBatch{base: 3, pid: pidA, control: 2}), want: []int64{0, 1, 2}, next: 4, control: 1},
		{name: "interleaved producers", rc: true, aborted: []abortedTxn{{pidA, 0}}, set: set(t,
			tBatch{base: 0, pid: pidA, txn: true, records: recs(0, 0, 1)}, // A aborted
			tBatch{base: 2, pid: pidB, txn: true, records: recs(2, 0, 1)}, // B committed
			tBatch{base: 4, pid: pidA, txn: true, records: recs(4, 0, 1)}, // A aborted
			tBatch{base: 6, pid: pidA, control: 2},                        // A abort
			tBatch{base: 7, pid: pidB, control: 1},                        // B commit
			tBatch{base: 8, pid: pidA, txn: true, records: recs(8, 0, 1)}, // A's next txn
			tBatch{base: 10, pid: pidA, control: 1},                       // committed
			tBatch{base: 11, records: recs(11, 0, 1)},                     // not transactional
		), want: []int64{2, 3, 8, 9, 11, 12}, next: 13, skipped: 4, control: 3},
		{name: "same producer aborts twice", rc: true, aborted: []abortedTxn{{pidA, 6}, {pidA, 0}}, set: set(t,
			tBatch{base: 0, pid: pidA, txn: true, records: recs(0, 0, 1)},
			tBatch{base: 2, pid: pidA, control: 2},
			tBatch{base: 3, pid: pidA, txn: true, records: recs(3, 0, 1)},
			tBatch{base: 5, pid: pidA, control: 1},
			tBatch{base: 6, pid: pidA, txn: true, records: recs(6, 0, 1)},
			tBatch{base: 8, pid: pidA, control: 2},
		), want: []int64{3, 4}, next: 9, skipped: 4, control: 3},
		{name: "idempotent non-transactional batch of an aborting producer id", rc: true, aborted: []abortedTxn{{pidA, 0}}, set: set(t,
			tBatch{base: 0, pid: pidA, txn: true, records: recs(0, 0)},
			tBatch{base: 1, pid: pidB, records: recs(1, 0, 1)},
			tBatch{base: 3, pid: pidA, control: 2},
		), want: []int64{1, 2}, next: 4, skipped: 1, control: 1},
		{name: "aborted transaction begun before the fetch offset", rc: true, from: 2, aborted: []abortedTxn{{pidA, 0}}, set: set(t,
			tBatch{base: 2, pid: pidA, txn: true, records: recs(2, 0, 1)},
			tBatch{base: 4, pid: pidA, control: 2},
		), want: nil, next: 5, skipped: 2, control: 1},
		{name: "control batch, read_uncommitted", set: set(t,
			tBatch{base: 5, pid: pidA, control: 1}), from: 5, want: nil, next: 6, control: 1},
		{name: "partial last batch is left for the next fetch", set: append(
			set(t, tBatch{base: 0, records: recs(0, 0, 1)}),
			encodeBatch(t, tBatch{base: 2, records: recs(2, 0, 1)})[:40]...),
			want: []int64{0, 1}, next: 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, out, err := run(t, c.set, c.from, c.rc, c.aborted)
			if err != nil {
				t.Fatalf("error: %v", err)
			}
			if !slices.Equal(offsets(got), c.want) {
				t.Errorf("offsets: want %v, got %v", c.want, offsets(got))
			}
			if out.next != c.next {
				t.Errorf("next: want %d, got %d", c.next, out.next)
			}
			if out.aborted != c.skipped || out.control != c.control {
				t.Errorf("skipped: want %d aborted records and %d markers, got %d and %d", c.skipped, c.control, out.aborted, out.control)
			}
			for _, r := range got {
				if string(r.Key) != fmt.Sprintf("k%d", r.Offset) || string(r.Value) != fmt.Sprintf("v%d", r.Offset) {
					t.Errorf("record %d: key %q value %q", r.Offset, r.Key, r.Value)
				}
			}
		})
	}
}

func TestDecodeFields(t *testing.T) {
	rs := []tRecord{
		{delta: 0, key: nil, value: nil, tsDelta: 0},           // null key, tombstone
		{delta: 1, key: []byte{}, value: []byte{}, tsDelta: 5}, // empty, not null
		{delta: 2, key: []byte("k\x00\xff"), value: []byte("binary\x00"), tsDelta: 9, headers: []wire.Header{
			{Key: "trace", Value: []byte("abc")}, {Key: "trace", Value: nil}, {Key: "", Value: []byte{}},
		}},
	}
	for _, codec := range []int8{0, 1, 2, 3, 4} {
		for _, logAppend := range []bool{false, true} {
			name := fmt.Sprintf("%s/log_append_time=%v", compress.Compression(codec), logAppend)
			t.Run(name, func(t *testing.T) {
				data := set(t, tBatch{base: 100, compression: codec, logAppend: logAppend, firstTS: 1_000_000, maxTS: 2_000_000, records: rs})
				got, out, err := run(t, data, 100, true, nil)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != 3 || out.next != 103 {
					t.Fatalf("want 3 records and next 103, got %d and %d", len(got), out.next)
				}
				if got[0].Key != nil || got[0].Value != nil {
					t.Errorf("null key/value: got %q %q", got[0].Key, got[0].Value)
				}
				if got[1].Key == nil || got[1].Value == nil || len(got[1].Key)+len(got[1].Value) != 0 {
					t.Errorf("empty key/value must be non-nil and empty: got %#v %#v", got[1].Key, got[1].Value)
				}
				if string(got[2].Key) != "k\x00\xff" || string(got[2].Value) != "binary\x00" {
					t.Errorf("binary key/value: got %q %q", got[2].Key, got[2].Value)
				}
				h := got[2].Headers
				if len(h) != 3 || h[0].Key != "trace" || string(h[0].Value) != "abc" || h[1].Key != "trace" || h[1].Value != nil ||
					h[2].Key != "" || h[2].Value == nil {
					t.Errorf("headers: got %#v", h)
				}
				if got[0].Headers != nil || got[1].Headers != nil {
					t.Errorf("records without headers have nil Headers")
				}
				for i, r := range got {
					want := int64(1_000_000) + rs[i].tsDelta
					if logAppend {
						want = 2_000_000
					}
					if r.Time.UnixMilli() != want {
						t.Errorf("record %d: timestamp want %d, got %d", i, want, r.Time.UnixMilli())
					}
					if r.Topic != "t" || r.Partition != 0 || r.Offset != int64(100+i) {
						t.Errorf("record %d: got %s/%d@%d", i, r.Topic, r.Partition, r.Offset)
					}
				}
			})
		}
	}
}

func TestScanErrors(t *testing.T) {
	good := set(t, tBatch{base: 0, records: recs(0, 0, 1)})
	bad := encodeBatch(t, tBatch{base: 2, records: recs(2, 0, 1)})
	flipped := slices.Clone(bad)
	flipped[len(flipped)-1] ^= 1 // content changed, CRC not
	old := encodeBatch(t, tBatch{base: 2, magic: 1, records: recs(2, 0)})
	// a batch whose count promises more records than it holds: its CRC is right
	short := encodeBatch(t, tBatch{base: 2, records: recs(2, 0, 1)})
	binary.BigEndian.PutUint32(short[offRecordCount:], 3)
	binary.BigEndian.PutUint32(short[offCRC:], crc32.Checksum(short[offAttributes:], castagnoli))

	cases := []struct {
		name        string
		set         []byte
		want        []int64
		next        int64
		unsupported bool
	}{
		{name: "CRC mismatch after a good batch", set: append(slices.Clone(good), flipped...), want: []int64{0, 1}, next: 2},
		{name: "CRC mismatch first", set: flipped, want: nil, next: 0},
		{name: "message format v1", set: append(slices.Clone(good), old...), want: []int64{0, 1}, next: 2, unsupported: true},
		// the records before the bad one are delivered; next is after them
		{name: "record count beyond the records", set: append(slices.Clone(good), short...), want: []int64{0, 1, 2, 3}, next: 4},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, out, err := run(t, c.set, 0, true, nil)
			var ce *CorruptError
			if !errors.As(err, &ce) {
				t.Fatalf("want a *CorruptError, got %v", err)
			}
			if ce.Unsupported != c.unsupported {
				t.Errorf("unsupported: want %v, got %v (%v)", c.unsupported, ce.Unsupported, err)
			}
			if !slices.Equal(offsets(got), c.want) || out.next != c.next {
				t.Errorf("want %v next %d, got %v next %d (%v)", c.want, c.next, offsets(got), out.next, err)
			}
			t.Logf("%v", err)
		})
	}
}

// TestReadChunks reads several batches in chunks of every size: a chunk may
// span batches, and decompressing the next batch must not overwrite the
// records of the chunk being built (they share one buffer).
func TestReadChunks(t *testing.T) {
	for _, codec := range []int8{0, int8(compress.Lz4), int8(compress.Zstd)} {
		var bs []tBatch
		for base := int64(0); base < 12; base += 3 {
			bs = append(bs, tBatch{base: base, compression: codec, records: recs(base, 0, 1, 2)})
		}
		data := set(t, bs...)
		for _, limit := range []int{1, 2, 3, 4, 5, 7, 100} {
			t.Run(fmt.Sprintf("%s/%d", compress.Compression(codec), limit), func(t *testing.T) {
				var out scanOut
				scan(data, 1, true, nil, &out)
				var in interner
				c := cursor{topic: "t", from: 1, batches: out.batches, intern: &in, last: 0}
				defer c.release()
				var got []int64
				for {
					recs, err := c.read(limit, func(int64) {})
					if err != nil {
						t.Fatal(err)
					}
					if len(recs) == 0 {
						break
					}
					if len(recs) > limit {
						t.Fatalf("chunk of %d, limit %d", len(recs), limit)
					}
					// check the whole chunk when it is returned
					for _, r := range recs {
						if string(r.Key) != fmt.Sprintf("k%d", r.Offset) || string(r.Value) != fmt.Sprintf("v%d", r.Offset) {
							t.Fatalf("record %d overwritten: key %q value %q", r.Offset, r.Key, r.Value)
						}
						got = append(got, r.Offset)
					}
				}
				if want := []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}; !slices.Equal(got, want) {
					t.Fatalf("want %v, got %v", want, got)
				}
			})
		}
	}
}

// TestDecompressLimit: a batch that inflates beyond the limit is a
// *CorruptError found without holding more than the limit (plus one growth
// step's copy); one at the limit decodes. A failed decompression leaves the
// cursor holding the buffer decompress returned, so release puts back
// exactly the buffers it owns.
func TestDecompressLimit(t *testing.T) {
	rs := recs(0, seq(100)...)
	for i := range rs {
		rs[i].value = make([]byte, 10<<10) // zeros: ~1 MB that compresses to ~1 KB
	}
	for _, codec := range []int8{int8(compress.Gzip), int8(compress.Snappy), int8(compress.Lz4), int8(compress.Zstd)} {
		data := set(t, tBatch{base: 0, compression: codec, records: rs})
		var out scanOut
		scan(data, 0, true, nil, &out)
		b := &out.batches[0]
		full, err := decompress(b, nil, nil, math.MaxInt32)
		if err != nil {
			t.Fatal(err)
		}
		size := len(full)
		putBuf(full)
		t.Run(compress.Compression(codec).String(), func(t *testing.T) {
			for _, limit := range []int{size, size - 1, 64 << 10} {
				var in interner
				c := cursor{topic: "t", batches: out.batches, intern: &in, last: -1, maxBatch: limit}
				var grown int64
				got, err := c.read(1000, func(n int64) { grown += n })
				var ce *CorruptError
				switch {
				case limit >= size:
					if err != nil || len(got) != 100 {
						t.Fatalf("limit %d, batch of %d: want 100 records, got %d, %v", limit, size, len(got), err)
					}
				case !errors.As(err, &ce) || !strings.Contains(ce.Reason, "decompresses to more than"):
					t.Fatalf("limit %d, batch of %d: want a *CorruptError, got %v", limit, size, err)
				case !ce.TooLarge || ce.Limit != int64(limit) || ce.Compressed != len(b.data) || ce.Offset != b.base:
					t.Fatalf("limit %d, batch of %d B at %d: want TooLarge, Limit %d, Compressed %d; got %+v", limit, len(b.data), b.base, limit, len(b.data), ce)
				case grown > int64(limit)+int64(cap(c.chunk))*recordSize+64<<10:
					t.Fatalf("limit %d: %d bytes of buffers grown", limit, grown)
				case unsafe.SliceData(c.zbuf) == nil || cap(c.zbuf) < limit/2:
					t.Fatalf("after the error the cursor holds a %d-byte buffer, not the one decompress used", cap(c.zbuf))
				}
				t.Logf("compressed %d B, decompressed %d B, limit %d: %d records, err %v, %d bytes of buffers", len(b.records()), size, limit, len(got), err, grown)
				c.release()
			}
		})
	}
}
