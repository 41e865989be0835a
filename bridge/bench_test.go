package bridge

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/wire"
	"github.com/kbridge/kbridge/tracker"
)

// BenchmarkAppend compares, side by side on the same Redis, the ingest's two
// conditional append paths (they check the stream's top, so they can never
// leave a hole): "script", the append script (batches of 500 entries, 10
// calls per round trip), and "multi", one MULTI/EXEC per 500 entries of
// plain XADDs behind a guard script (stream_multi.go), one per round trip, with a plain
// pipelined XADD of the same entries (which can leave a hole), 5,000 per
// round trip, for 100-byte and 1 KB values. Besides records/s it reports redis-server's
// CPU time per record (INFO cpu, before and after): on a shared machine the
// wall-clock rate swings with the load, Redis's CPU per record much less,
// and Redis is single-threaded, so that is its ceiling. Run on a real Redis
// with REDIS_ADDR set (scripts/bench.sh).
func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{100, 1024} {
		value := make([]byte, size)
		mk := func(from, n int) []wire.Record {
			out := make([]wire.Record, n)
			for i := range out {
				out[i] = wire.Record{Topic: "bench", Offset: int64(from + i), Time: time.UnixMilli(1), Key: []byte("k" + strconv.Itoa(i)), Value: value}
			}
			return out
		}
		const chunk = 5000
		for _, path := range []struct {
			name  string
			multi bool
		}{{"script", false}, {"multi", true}} {
			b.Run(fmt.Sprintf("%s-%dB", path.name, size), func(b *testing.B) {
				s, rdb := newStreamPath(b, 500, path.multi)
				ctx := context.Background()
				if err := s.ensure(ctx); err != nil {
					b.Fatal(err)
				}
				top := tracker.None
				cpu0 := redisCPU(b, rdb)
				b.ResetTimer()
				for done := 0; done < b.N; done += chunk {
					res, err := s.append(ctx, top, -1, mk(done, min(chunk, b.N-done)))
					if err != nil || res.lost {
						b.Fatalf("append: %v %+v", err, res)
					}
					top = res.top
				}
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
				b.ReportMetric(float64((redisCPU(b, rdb)-cpu0).Microseconds())/float64(b.N), "redis-µs/record")
			})
		}
		b.Run(fmt.Sprintf("xadd-pipeline-%dB", size), func(b *testing.B) {
			s, rdb := newStream(b, 500)
			ctx := context.Background()
			if err := s.ensure(ctx); err != nil {
				b.Fatal(err)
			}
			cpu0 := redisCPU(b, rdb)
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
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
			b.ReportMetric(float64((redisCPU(b, rdb)-cpu0).Microseconds())/float64(b.N), "redis-µs/record")
		})
	}
}

// redisCPU returns redis-server's CPU time so far (INFO cpu: user + sys), 0
// on a server that does not say (miniredis).
func redisCPU(tb testing.TB, rdb *redis.Client) time.Duration {
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		tb.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_user" || k == "used_cpu_sys") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
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
