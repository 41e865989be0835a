package kfetch

// Review tests (branch review-kfetch): each test here is a reproduction of a
// finding. A test that FAILS on main shows the problem; see the comment of
// each for what Kafka does and why it matters.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"
	"time"
	"unsafe"

	"github.com/segmentio/kafka-go/compress"
)

// TestBreakEmptyAnswerIsNotAnEmptyRange: Kafka answers a partition with no
// records, no error, and its real high watermark / last stable offset in
// cases where records DO exist at the fetch offset:
//
//   - tiered storage (KIP-405): the fetch offset is below the local log
//     start, and the remote read did not finish within remote.fetch.max.wait.ms
//     (DelayedRemoteFetch.onComplete then answers the local read result: EMPTY),
//     or the remote fetch quota throttles it (ReplicaManager
//     .handleOffsetOutOfRangeError, throttleTimeMs > 0: EMPTY, no error), or
//     it is the second partition of a request needing a remote read (only
//     the first one is read remotely) after a first one that got nothing;
//   - a preferred read replica (KIP-392, Fetch v11, replica.selector.class):
//     "If a preferred read-replica is set, skip the read" — EMPTY plus the
//     preferred_read_replica field, which kfetch discards (protocol.go:508).
//
// The partition is the first of its request (so "eligible"), and kfetch
// moves Next to the last stable offset: every record in [10, 1000) is lost
// once the ingest commits Next.
func TestBreakEmptyAnswerIsNotAnEmptyRange(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	_, ps := startFake(t, c, Config{}, 0, 10)
	// what DelayedRemoteFetch.onComplete answers after the remote read expired
	c.next(t).answer(func(fakePart) respPartition {
		return respPartition{hwm: 1000, lso: 1000, logStart: 0}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	r, err := ps[0].Next(ctx)
	if err != nil {
		return // nothing delivered: fine
	}
	defer r.Release()
	if r.Next > 10 {
		t.Fatalf("an empty answer (remote read expired / preferred replica) moved Next from %d to %d: records [%d, %d) are skipped", r.Offset, r.Next, r.Offset, r.Next)
	}
}

// TestBreakPreferredReadReplicaDropped: the same, from the bytes a Kafka
// broker with replica.selector.class sends (Fetch v11): preferred replica 2,
// no records. The field is read and thrown away; the partition jumps.
func TestBreakPreferredReadReplicaDropped(t *testing.T) {
	const id = 77
	var b []byte
	be := binary.BigEndian
	b = be.AppendUint32(b, id)
	b = be.AppendUint32(b, 0) // throttle
	b = be.AppendUint16(b, 0) // error
	b = be.AppendUint32(b, 0) // session
	b = be.AppendUint32(b, 1) // topics
	b = be.AppendUint16(b, 1)
	b = append(b, 't')
	b = be.AppendUint32(b, 1)                   // partitions
	b = be.AppendUint32(b, 0)                   // partition 0
	b = be.AppendUint16(b, 0)                   // no error
	b = be.AppendUint64(b, 1000)                // high watermark
	b = be.AppendUint64(b, 1000)                // last stable offset
	b = be.AppendUint64(b, 0)                   // log start
	b = be.AppendUint32(b, 0xffffffff)          // aborted: null
	b = be.AppendUint32(b, 2)                   // preferred read replica: broker 2
	b = be.AppendUint32(b, 0)                   // records: empty
	msg := be.AppendUint32(nil, uint32(len(b))) // size
	msg = append(msg, b...)
	res, err := readFetchResponse(bytes.NewReader(msg), 11, id)
	if err != nil {
		t.Fatal(err)
	}

	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	_, ps := startFake(t, c, Config{}, 0, 10)
	ff := c.next(t)
	ff.reply <- fakeReply{res: res}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	r, err := ps[0].Next(ctx)
	if err != nil {
		return
	}
	defer r.Release()
	if r.Next > 10 {
		t.Fatalf("preferred_read_replica=2 with no records moved Next from 10 to %d", r.Next)
	}
}

// TestBreakReadErrorAfterPrefetchBuffered: Result.fail stops the partition
// and moves its position back, but a result fetched ahead that is already
// buffered is not dropped: the next Next returns it, starting at the old
// Next. Records between the bad record and that offset are never delivered
// (the doc promises "the partition stops until Partition.SetOffset").
// TestReadErrorStopsPartition only covers the case where the fetch ahead is
// still in flight.
func TestBreakReadErrorAfterPrefetchBuffered(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	f, ps := startFake(t, c, Config{}, 0, 0)
	p0 := ps[0]
	bad := encodeBatch(t, tBatch{base: 3, lastDelta: 2, records: recs(3, 0, 1)})
	binary.BigEndian.PutUint32(bad[offRecordCount:], 3) // promises a record it lacks
	binary.BigEndian.PutUint32(bad[offCRC:], crc32.Checksum(bad[offAttributes:], castagnoli))
	c.next(t).answer(func(fakePart) respPartition {
		return respPartition{hwm: 10, lso: 10, records: append(encodeBatch(t, tBatch{base: 0, records: recs(0, 0, 1, 2)}), bad...)}
	})
	r := next(t, p0)
	// the fetch ahead (from 6) is answered and buffered before Read fails
	c.next(t).answer(func(p fakePart) respPartition { return data(t, p.offset, 2, 10) })
	testenv_eventually(t, func() bool { f.mu.Lock(); defer f.mu.Unlock(); return p0.buffered != nil })
	for {
		recs, err := r.Read(100)
		if err != nil || len(recs) == 0 {
			break
		}
	}
	if r.Err == nil || r.Next != 5 {
		t.Fatalf("setup: want a decode error and Next 5, got %v %d", r.Err, r.Next)
	}
	r.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if r2, err := p0.Next(ctx); err == nil {
		t.Fatalf("partition stopped at 5 by a decode error, yet Next returned [%d, %d): offset 5 is skipped", r2.Offset, r2.Next)
	}
}

// TestBreakDecompressErrorDoublePut: when decompressing a batch fails after
// decompress has swapped the cursor's buffer for a bigger one (putBuf of
// the old one), cursor.open keeps the old buffer in c.zbuf, and
// cursor.release puts it into the pool a second time. Two later getBuf
// calls (e.g. the record sets of two fetch responses) then share one array.
func TestBreakDecompressErrorDoublePut(t *testing.T) {
	small := tBatch{base: 0, compression: int8(compress.Gzip), records: recs(0, 0, 1)}
	// a gzip batch whose compressed records section is 4 KiB of garbage,
	// CRC right: decompress wants a 16 KiB buffer, then fails
	big := encodeBatch(t, tBatch{base: 2, records: recs(2, 0)})
	big = big[:batchHeaderLen]
	big = append(big, bytes.Repeat([]byte{0x1f, 0x8b, 0x08, 0, 0xff}, 1000)...)
	binary.BigEndian.PutUint16(big[offAttributes:], uint16(compress.Gzip))
	binary.BigEndian.PutUint32(big[offLength:], uint32(len(big)-12))
	binary.BigEndian.PutUint32(big[offCRC:], crc32.Checksum(big[offAttributes:], castagnoli))
	data := append(encodeBatch(t, small), big...)

	for attempt := range 50 {
		var out scanOut
		scan(data, 0, true, nil, &out)
		if out.err != nil || len(out.batches) != 2 {
			t.Fatalf("setup: %v %d batches", out.err, len(out.batches))
		}
		var in interner
		c := cursor{topic: "t", batches: out.batches, intern: &in, last: -1}
		if _, err := c.read(2, func(int64) {}); err != nil {
			t.Fatal(err) // the small batch decodes
		}
		held := c.zbuf // the cursor's buffer
		if _, err := c.read(2, func(int64) {}); err == nil {
			t.Fatal("setup: the garbage batch decompressed")
		}
		if unsafe.SliceData(c.zbuf) != unsafe.SliceData(held) {
			continue
		}
		// c.zbuf was already given back by decompress: a getBuf of its
		// class may hand it out while the cursor still owns it
		got := getBuf(cap(held))
		same := unsafe.SliceData(got[:cap(got)]) == unsafe.SliceData(held[:cap(held)])
		c.release() // ... and this puts it back a second time
		if same {
			t.Fatalf("attempt %d: after a failed decompression the cursor's buffer is in the pool while the cursor still holds it; release puts it there again", attempt)
		}
		putBuf(got)
	}
	t.Log("double put not observed (sync.Pool is not deterministic, e.g. under -race)")
}

var _ = errors.New

// TestBreakBudgetBigBatch: a partition whose first batch is larger than the
// whole budget is still fetched (nothing held), and once every result is
// released the accounting is back at zero: no deadlock, no leak.
func TestBreakBudgetBigBatch(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	c.setLeader("t", 1, 1)
	f, ps := startFake(t, c, Config{MemoryBytes: 64 << 10, MaxBytes: 16 << 10, PartitionMaxBytes: 16 << 10}, 0, 0, 1, 0)
	big := func(from int64) respPartition {
		rs := recs(from, seq(400)...)
		for i := range rs {
			rs[i].value = make([]byte, 500) // a 200 KB batch: 3x the budget
		}
		return respPartition{hwm: 10_000, lso: 10_000, records: encodeBatch(t, tBatch{base: from, records: rs})}
	}
	ff := c.next(t)
	ff.answer(func(p fakePart) respPartition {
		if p.partition == ff.req[0].partition {
			return big(p.offset)
		}
		return respPartition{hwm: 10_000, lso: 10_000} // the limit ran out
	})
	first := ff.req[0].partition
	r := next(t, ps[first])
	if n := len(readAll(t, r)); n != 400 {
		t.Fatalf("want 400 records, got %d", n)
	}
	s := f.Stats()
	t.Logf("held %d of a %d budget", s.MemoryHeld, s.MemoryBudget)
	c.none(t, 200*time.Millisecond, "a fetch while one result holds more than the budget")
	r.Release()
	// both go again: the other partition first (starved)
	ff = c.next(t)
	if ff.req[0].partition == first {
		t.Fatalf("the starved partition must go first, got %+v", ff.req)
	}
	ff.answer(nil)
	testenv_eventually(t, func() bool {
		s := f.Stats()
		return s.MemoryHeld == 0
	})
}

// TestBreakExpansionLearnsFromUnreadResults: Pause (and SetOffset, Close,
// shutdown) release buffered results that were never read; uncharge learns
// from them that a fetched byte costs cap/len ≈ 1, so a few pauses undo
// what decoding a compressed topic taught (expansion 10+ → ~1.3), and the
// requests that follow reserve far less than decoding them will take.
func TestBreakExpansionLearnsFromUnreadResults(t *testing.T) {
	c := newFakeCluster()
	c.setLeader("t", 0, 1)
	f, ps := startFake(t, c, Config{}, 0, 0)
	p := ps[0]
	zbatch := func(from int64) respPartition {
		rs := recs(from, seq(1000)...)
		for i := range rs {
			rs[i].value = make([]byte, 400) // zeros: compress well
		}
		return respPartition{hwm: 1 << 40, lso: 1 << 40, records: encodeBatch(t, tBatch{base: from, compression: int8(compress.Zstd), records: rs})}
	}
	c.next(t).answer(func(q fakePart) respPartition { return zbatch(q.offset) })
	r := next(t, p)
	readAll(t, r)
	r.Release()
	learned := f.Stats().Expansion
	t.Logf("bytes %d", r.Bytes)
	for range 20 {
		ff := c.next(t) // the fetch ahead
		ff.answer(func(q fakePart) respPartition { return zbatch(q.offset) })
		testenv_eventually(t, func() bool { f.mu.Lock(); defer f.mu.Unlock(); return p.buffered != nil })
		p.Pause() // backpressure: the unread result is released
		p.Resume()
	}
	after := f.Stats().Expansion
	t.Logf("expansion after reading a zstd result: %.2f; after 20 pauses: %.2f", learned, after)
	if after < learned/2 {
		t.Errorf("unread results taught the estimator: %.2f → %.2f", learned, after)
	}
}
