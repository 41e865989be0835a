package kfetch

import (
	"encoding/binary"
	"hash/crc32"
	"slices"
)

// Record batch v2 layout (KIP-98), offsets from the start of the batch. The
// batch length counts the bytes after its own field, so a batch is
// 12+length bytes long.
const (
	offLength          = 8
	offMagic           = 16
	offCRC             = 17
	offAttributes      = 21 // the CRC covers everything from here on
	offLastOffsetDelta = 23
	offFirstTimestamp  = 27
	offMaxTimestamp    = 35
	offProducerID      = 43
	offRecordCount     = 57
	batchHeaderLen     = 61

	attrCompression   = 0x07
	attrLogAppendTime = 0x08
	attrTransactional = 0x10
	attrControl       = 0x20

	controlAbort = 0 // control record type of an abort marker (1 is commit)

	maxMarkerBytes = 64 << 10 // a marker is a record of a few bytes
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// batch is one complete record batch of a fetched record set, its header
// fields read and its CRC checked. data aliases the record set.
type batch struct {
	data       []byte
	base, last int64 // first and last offset; last survives compaction
	attrs      int16
	producerID int64
	count      int32
}

func (b *batch) compression() int8   { return int8(b.attrs & attrCompression) }
func (b *batch) control() bool       { return b.attrs&attrControl != 0 }
func (b *batch) transactional() bool { return b.attrs&attrTransactional != 0 }
func (b *batch) records() []byte     { return b.data[batchHeaderLen:] }

// abortedTxn is one entry of a fetch response's aborted-transaction list.
type abortedTxn struct {
	producerID  int64
	firstOffset int64
}

// scanOut is what scan found in a record set.
type scanOut struct {
	batches  []batch // to deliver, in offset order
	next     int64   // the position after everything examined
	complete int     // complete batches seen
	partial  bool    // the set ends with a truncated batch (ignored)
	aborted  int64   // records in aborted batches, skipped
	control  int     // control batches (transaction markers), skipped
	err      error   // *CorruptError: the set is unusable from next on
}

// scan walks the batches of a record set fetched at offset from, keeping
// what a consumer with this isolation level delivers, as Kafka's Java
// consumer does (CompletedFetch): in read_committed, a transactional batch
// whose producer has an aborted transaction begun at or before the batch's
// last offset — and not yet closed by that producer's abort marker — is
// skipped; control batches are never delivered. next moves past every
// complete batch examined, using the batch's last offset (kept by
// compaction), so neither markers, nor aborted batches, nor batches whose
// tail records were compacted away are fetched twice.
//
// It only reads batch headers (and, for control batches, the marker type):
// records are decoded later, by the caller's goroutine.
func scan(set []byte, from int64, readCommitted bool, aborted []abortedTxn, out *scanOut) {
	out.batches = out.batches[:0]
	out.next, out.complete, out.partial, out.aborted, out.control, out.err = from, 0, false, 0, 0, nil
	if readCommitted && len(aborted) > 1 {
		slices.SortFunc(aborted, func(a, b abortedTxn) int {
			switch {
			case a.firstOffset < b.firstOffset:
				return -1
			case a.firstOffset > b.firstOffset:
				return 1
			}
			return 0
		})
	}
	var abortedPIDs []int64 // producers inside an aborted transaction; tiny
	var pidBuf [4]int64
	abortedPIDs = pidBuf[:0]
	ai := 0
	for pos := 0; pos < len(set); {
		rest := set[pos:]
		if len(rest) < offMagic+1 {
			out.partial = true
			return
		}
		base := int64(binary.BigEndian.Uint64(rest))
		length := int64(int32(binary.BigEndian.Uint32(rest[offLength:])))
		if length < 0 {
			out.err = corrupt(base, "negative batch length %d", length)
			return
		}
		if int64(len(rest)) < 12+length {
			out.partial = true // the broker cut the last batch at the size limit
			return
		}
		data := rest[:12+length]
		pos += len(data)
		if magic := data[offMagic]; magic != 2 {
			out.err = corrupt(base, "message format v%d (magic %d) is not supported: only record batch v2 (Kafka ≥ 0.11)", magic, magic)
			out.err.(*CorruptError).Unsupported = true
			return
		}
		if len(data) < batchHeaderLen {
			out.err = corrupt(base, "batch of %d bytes is shorter than its header", len(data))
			return
		}
		if want, got := binary.BigEndian.Uint32(data[offCRC:]), crc32.Checksum(data[offAttributes:], castagnoli); want != got {
			out.err = corrupt(base, "CRC mismatch: batch says %08x, content is %08x", want, got)
			return
		}
		b := batch{
			data:       data,
			base:       base,
			last:       base + int64(int32(binary.BigEndian.Uint32(data[offLastOffsetDelta:]))),
			attrs:      int16(binary.BigEndian.Uint16(data[offAttributes:])),
			producerID: int64(binary.BigEndian.Uint64(data[offProducerID:])),
			count:      int32(binary.BigEndian.Uint32(data[offRecordCount:])),
		}
		if b.last < b.base || b.count < 0 {
			out.err = corrupt(base, "last offset %d below base offset, or %d records", b.last, b.count)
			return
		}
		out.complete++
		if b.last < from {
			continue // wholly before the offset asked: nothing to examine
		}
		if readCommitted && b.producerID >= 0 {
			for ai < len(aborted) && aborted[ai].firstOffset <= b.last {
				if !slices.Contains(abortedPIDs, aborted[ai].producerID) {
					abortedPIDs = append(abortedPIDs, aborted[ai].producerID)
				}
				ai++
			}
			if b.control() {
				abort, err := isAbortMarker(&b)
				if err != nil {
					out.err = err
					return
				}
				if abort {
					if i := slices.Index(abortedPIDs, b.producerID); i >= 0 {
						abortedPIDs = slices.Delete(abortedPIDs, i, i+1)
					}
				}
			} else if b.transactional() && slices.Contains(abortedPIDs, b.producerID) {
				out.aborted += int64(b.count)
				out.next = max(out.next, b.last+1)
				continue
			}
		}
		out.next = max(out.next, b.last+1)
		if b.control() {
			out.control++
			continue
		}
		if b.count > 0 {
			out.batches = append(out.batches, b)
		}
	}
}

// isAbortMarker reads the type of a control batch's first record: its key is
// int16 version, int16 type (0 abort, 1 commit).
func isAbortMarker(b *batch) (bool, error) {
	if b.count == 0 {
		return false, nil
	}
	recs := b.records()
	if b.compression() != 0 { // Kafka writes markers uncompressed; be lenient
		scratch, err := decompress(b, nil, nil, maxMarkerBytes)
		defer putBuf(scratch)
		if err != nil {
			return false, err
		}
		recs = scratch
	}
	var r rawRecord
	if _, err := r.parse(recs, b.base); err != nil {
		return false, err
	}
	if len(r.key) < 4 {
		return false, corrupt(b.base, "control record key of %d bytes", len(r.key))
	}
	return int16(binary.BigEndian.Uint16(r.key[2:])) == controlAbort, nil
}

// rawRecord is one record of a batch, its byte fields aliasing the batch.
type rawRecord struct {
	offset   int64
	tsDelta  int64
	key      []byte // nil for a null key
	value    []byte // nil for a null value
	nHeaders int
	headers  []byte // the encoded headers
}

// parse reads the record at the start of b (base is the batch's base offset)
// and returns the bytes it took.
func (r *rawRecord) parse(b []byte, base int64) (int, error) {
	length, n := binary.Varint(b)
	if n <= 0 || length < 0 || int64(len(b)-n) < length {
		return 0, corrupt(base, "record length %d with %d bytes left", length, len(b)-n)
	}
	total := n + int(length)
	rec := b[n:total]
	if len(rec) < 1 {
		return 0, corrupt(base, "empty record")
	}
	p := 1 // attributes, unused
	var ok bool
	var v int64
	if v, p, ok = varint(rec, p); !ok {
		return 0, corrupt(base, "bad timestamp delta")
	}
	r.tsDelta = v
	if v, p, ok = varint(rec, p); !ok {
		return 0, corrupt(base, "bad offset delta")
	}
	r.offset = base + v
	if r.key, p, ok = nullableBytes(rec, p); !ok {
		return 0, corrupt(r.offset, "bad key length")
	}
	if r.value, p, ok = nullableBytes(rec, p); !ok {
		return 0, corrupt(r.offset, "bad value length")
	}
	if v, p, ok = varint(rec, p); !ok || v < 0 || v > int64(len(rec)) {
		return 0, corrupt(r.offset, "bad header count")
	}
	r.nHeaders = int(v)
	r.headers = rec[p:]
	return total, nil
}

// varint reads a zig-zag varint at b[p:].
func varint(b []byte, p int) (int64, int, bool) {
	if p > len(b) {
		return 0, p, false
	}
	v, n := binary.Varint(b[p:])
	if n <= 0 {
		return 0, p, false
	}
	return v, p + n, true
}

// nullableBytes reads a varint length and that many bytes (-1: null). An
// empty field is a non-nil empty slice, so null and empty stay apart.
func nullableBytes(b []byte, p int) ([]byte, int, bool) {
	l, p, ok := varint(b, p)
	if !ok || l < -1 || l > int64(len(b)-p) {
		return nil, p, false
	}
	if l == -1 {
		return nil, p, true
	}
	return b[p : p+int(l) : p+int(l)], p + int(l), true
}
