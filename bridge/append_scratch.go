package bridge

import (
	"strconv"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/wire"
)

// Scratches are pooled, not kept per partition: one holds the arguments of
// one append (hundreds of KiB for a chunk of thousands of records), so a
// scratch per partition made the memory of 1,000 partitions grow with the
// partitions that ever appended a large chunk, outside the fetch budget.
// Pooled, it grows with the appends in flight — at most the Redis client's
// pool size — and the GC takes back what a burst left.
var scratchPool = sync.Pool{New: func() any { return new(appendScratch) }}

func getScratch() *appendScratch { return scratchPool.Get().(*appendScratch) }

// putScratch drops what sc points into (the caller's records, the replies)
// and returns it to the pool.
func putScratch(sc *appendScratch) {
	sc.done()
	scratchPool.Put(sc)
}

// appendScratch holds what the arguments of one append point to, reused from
// append to append, so that building them costs no allocation per record:
// numbers go in as *int64 and byte strings as *bytesArg (pointers box into an
// interface for free; go-redis writes both without copying), the record's
// topic and partition as interface values boxed once.
type appendScratch struct {
	keys  []string
	args  []any
	cmds  []*redis.Cmd
	nums  []int64
	bufs  []bytesArg
	topic struct {
		s string
		v any
	}
	part struct {
		n int
		v any
	}
	hdr []any
	// the MULTI path (stream_multi.go): the entry IDs, in idBuf, one per
	// record in order, and the XADD commands
	idBuf []byte
	ids   []bytesArg
	xadds []*redis.StatusCmd
}

// bytesArg is a byte string argument that go-redis writes as it is
// (encoding.BinaryMarshaler), boxed as a pointer.
type bytesArg []byte

func (b *bytesArg) MarshalBinary() ([]byte, error) { return *b, nil }

// reset makes room for the arguments of n records, so the arenas do not
// grow while arguments point into them (were they to, the arguments would
// still be right: they keep the old array alive).
func (sc *appendScratch) reset(n int) {
	// per record: offset and timestamp; per call: expected top, log end,
	// count
	if need := 5*n + 3; cap(sc.nums) < need {
		sc.nums = make([]int64, 0, need)
	}
	if cap(sc.idBuf) < 22*n {
		sc.idBuf = make([]byte, 0, 22*n)
	}
	if cap(sc.ids) < n {
		sc.ids = make([]bytesArg, 0, n)
	}
	if cap(sc.bufs) < 2*n {
		sc.bufs = make([]bytesArg, 0, 2*n)
	}
	sc.nums, sc.bufs = sc.nums[:0], sc.bufs[:0]
	sc.idBuf, sc.ids = sc.idBuf[:0], sc.ids[:0]
}

// done drops what points into the caller's records and the replies.
func (sc *appendScratch) done() {
	clear(sc.bufs)
	clear(sc.cmds)
	clear(sc.args)
	clear(sc.hdr)
	clear(sc.ids)
	clear(sc.xadds)
}

// id returns the entry ID of record off, "<off>-1", as an argument; the
// i-th call's is sc.ids[i]. idBuf grows in place (were it to move, the IDs
// given out would keep the old array).
func (sc *appendScratch) id(off int64) any {
	start := len(sc.idBuf)
	sc.idBuf = strconv.AppendInt(sc.idBuf, off, 10)
	sc.idBuf = append(sc.idBuf, '-', '1')
	sc.ids = append(sc.ids, sc.idBuf[start:len(sc.idBuf):len(sc.idBuf)])
	return &sc.ids[len(sc.ids)-1]
}

func (sc *appendScratch) num(v int64) any {
	sc.nums = append(sc.nums, v)
	return &sc.nums[len(sc.nums)-1]
}

func (sc *appendScratch) bytes(b []byte) any {
	sc.bufs = append(sc.bufs, b)
	return &sc.bufs[len(sc.bufs)-1]
}

// appendRecord appends one record's script arguments: its offset, its field
// count and its fields, the same as wire.Record.AppendFields gives
// (TestAppendArgsMatchWire), in the same order.
func (sc *appendScratch) appendRecord(args []any, r *wire.Record) []any {
	if sc.topic.v == nil || sc.topic.s != r.Topic {
		sc.topic.s, sc.topic.v = r.Topic, r.Topic
	}
	if sc.part.v == nil || sc.part.n != r.Partition {
		sc.part.n, sc.part.v = r.Partition, strconv.Itoa(r.Partition)
	}
	mark := len(args)
	off := sc.num(r.Offset)
	args = append(args, off, 0,
		wire.FieldTopic, sc.topic.v,
		wire.FieldPartition, sc.part.v,
		wire.FieldOffset, off,
		wire.FieldTimestamp, sc.num(r.Time.UnixMilli()))
	if r.Key != nil {
		args = append(args, wire.FieldKey, sc.bytes(r.Key))
	}
	if r.Value != nil {
		args = append(args, wire.FieldValue, sc.bytes(r.Value))
	}
	if len(r.Headers) > 0 {
		// rare enough to take the codec's own path (JSON, base64)
		h := wire.Record{Headers: r.Headers}
		sc.hdr = h.AppendFields(sc.hdr[:0])
		args = append(args, wire.FieldHeaders, sc.hdr[len(sc.hdr)-1])
	}
	args[mark+1] = len(args) - mark - 2
	return args
}
