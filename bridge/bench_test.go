package bridge

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/wire"
	"github.com/kbridge/kbridge/tracker"
)

// BenchmarkAppend compares, side by side on the same Redis, the conditional
// append script (what the ingest uses: it checks the stream's top, so it can
// never leave a hole) with a plain pipelined XADD of the same entries (which
// can). Both pipeline batches of 500 entries of 100-byte values, 10 batches
// per round trip. Run on a real Redis with REDIS_ADDR set (scripts/bench.sh).
func BenchmarkAppend(b *testing.B) {
	value := make([]byte, 100)
	mk := func(from, n int) []wire.Record {
		out := make([]wire.Record, n)
		for i := range out {
			out[i] = wire.Record{Topic: "bench", Offset: int64(from + i), Time: time.UnixMilli(1), Key: []byte("k" + strconv.Itoa(i)), Value: value}
		}
		return out
	}
	const chunk = 5000
	b.Run("script", func(b *testing.B) {
		s, _ := newStream(b, 500)
		ctx := context.Background()
		if err := s.ensure(ctx); err != nil {
			b.Fatal(err)
		}
		top := tracker.None
		b.ResetTimer()
		for done := 0; done < b.N; done += chunk {
			res, err := s.append(ctx, top, -1, mk(done, min(chunk, b.N-done)))
			if err != nil || res.lost {
				b.Fatalf("append: %v %+v", err, res)
			}
			top = res.top
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
	b.Run("xadd-pipeline", func(b *testing.B) {
		s, rdb := newStream(b, 500)
		ctx := context.Background()
		if err := s.ensure(ctx); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for done := 0; done < b.N; done += chunk {
			pipe := rdb.Pipeline()
			for _, r := range mk(done, min(chunk, b.N-done)) {
				pipe.XAdd(ctx, &redisXAddArgs{Stream: s.key, ID: wire.EntryID(r.Offset), Values: r.AppendFields(nil)})
			}
			if _, err := pipe.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
}

// BenchmarkObserve measures one commit observation (the Lua snapshot of the
// stream and two groups) on a stream of 10,000 entries with 1,000 pending.
func BenchmarkObserve(b *testing.B) {
	s, rdb := newStream(b, 500)
	ctx := context.Background()
	if err := s.ensure(ctx); err != nil {
		b.Fatal(err)
	}
	recs := make([]wire.Record, 10000)
	for i := range recs {
		recs[i] = wire.Record{Topic: "bench", Offset: int64(i), Value: []byte("v")}
	}
	if _, err := s.append(ctx, tracker.None, -1, recs); err != nil {
		b.Fatal(err)
	}
	rdb.XReadGroup(ctx, &redisXReadGroupArgs{Group: "a", Consumer: "c", Streams: []string{s.key, ">"}, Count: 1000})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.observe(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
