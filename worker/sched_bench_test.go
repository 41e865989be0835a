package worker

// Quick measurements of the scheduler, side by side in one run. Run them on
// a real Redis with one iteration each, e.g.
//
//	REDIS_ADDR=127.0.0.1:26379 go test -run '^$' -bench 'Sched' -benchtime 1x ./worker
//
// The project's benchmark harness (scripts/bench.sh) measures the same with
// an ingest and a Kafka broker; these isolate the worker.

import (
	"context"
	"errors"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

type benchEnv struct {
	rdb    *redis.Client
	prefix string
}

func newBenchEnv(b *testing.B, n int) *benchEnv {
	r := testenv.NewRedis(b)
	e := &benchEnv{rdb: r.Client(b), prefix: testenv.Name(b) + "-" + strconv.Itoa(n)}
	return e
}

// streams creates n partition streams of topic t with the default group.
func (e *benchEnv) streams(b *testing.B, n int) []string {
	ctx := context.Background()
	p := e.rdb.Pipeline()
	var out []string
	for i := range n {
		s := wire.StreamKey(e.prefix, "t", i)
		out = append(out, s)
		p.XGroupCreateMkStream(ctx, s, DefaultGroup, "0")
		p.SAdd(ctx, wire.RegistryKey(e.prefix), s)
	}
	if _, err := p.Exec(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		p := e.rdb.Pipeline()
		for _, s := range out {
			p.Del(context.Background(), s, wire.DLQKey(s))
		}
		p.Del(context.Background(), wire.RegistryKey(e.prefix))
		_, _ = p.Exec(context.Background())
	})
	return out
}

func (e *benchEnv) add(b *testing.B, s string, from, n int) {
	ctx := context.Background()
	// The entry's partition must be its stream's: the worker dead-letters
	// an entry whose fields disagree with its stream key as malformed.
	_, _, part, err := wire.ParseStreamKey(s)
	if err != nil {
		b.Fatal(err)
	}
	p := e.rdb.Pipeline()
	for o := from; o < from+n; o++ {
		r := wire.Record{Topic: "t", Partition: part, Offset: int64(o), Time: time.UnixMilli(1700000000000), Value: []byte("v" + strconv.Itoa(o))}
		p.XAdd(ctx, &redis.XAddArgs{Stream: s, ID: wire.EntryID(int64(o)), Values: r.AppendFields(nil)})
		if p.Len() >= 1000 {
			if _, err := p.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	if _, err := p.Exec(ctx); err != nil {
		b.Fatal(err)
	}
}

func (e *benchEnv) run(b *testing.B, cfg Config, until func() bool) time.Duration {
	cfg.Redis, cfg.Prefix = e.rdb, e.prefix
	if cfg.VisibilityTimeout == 0 {
		cfg.VisibilityTimeout = 30 * time.Second
	}
	cfg.DiscoveryInterval = time.Second
	w, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	// wait for the discovery before the clock starts
	for w.Stats().Streams == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	for !until() {
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	cancel()
	<-errc
	return took
}

func median(xs []float64) float64 {
	sort.Float64s(xs)
	return xs[len(xs)/2]
}

// BenchmarkSchedHotPartition: records all in one partition of a topic with
// 1,000 partitions, against the same records on a 1-partition topic; same
// worker settings (concurrency 32, 1 ms handler), alternated three times.
func BenchmarkSchedHotPartition(b *testing.B) {
	const records = 20000
	rate := func(n int) float64 {
		e := newBenchEnv(b, n)
		ss := e.streams(b, n)
		var done atomic.Int64
		cfg := Config{Concurrency: 32, Handler: func(context.Context, *Message) error {
			time.Sleep(time.Millisecond)
			done.Add(1)
			return nil
		}}
		// the records are there before the worker starts; time from discovery
		e.add(b, ss[0], 0, records)
		took := e.run(b, cfg, func() bool { return done.Load() >= records })
		return records / took.Seconds()
	}
	var r1, r1000, ratios []float64
	for range 3 {
		a, c := rate(1), rate(1000)
		r1, r1000, ratios = append(r1, a), append(r1000, c), append(ratios, c/a)
	}
	b.Logf("1 partition: %.0f records/s; 1,000 partitions, all records in one: %.0f records/s; ratio %.2f (runs %.2f)", median(r1), median(r1000), median(ratios), ratios)
	b.ReportMetric(median(ratios), "hot/1-partition")
	b.ReportMetric(median(r1000), "records/s")
}

// BenchmarkSchedSlowBeside: a 1 ms partition alone, then beside a 500 ms
// partition, then beside a partition whose handler always fails (backoff
// 1 s), at concurrency 32 and 512 (sub-benchmarks; KBRIDGE_BENCH_CONCURRENCY
// sets others). The fast partition's rate beside each, over its rate alone;
// and over its rate alone with half the slots, its share beside the slow
// one (slots are shared by handler time). Where the fast partition alone is
// slot-bound (32 slots × 1 ms), half the slots is about half its rate; with
// enough slots it is bound by the reads, the acks and the CPU instead, and
// losing half of them to the slow partition costs it less.
func BenchmarkSchedSlowBeside(b *testing.B) {
	concs := []int{32, 512}
	if v := os.Getenv("KBRIDGE_BENCH_CONCURRENCY"); v != "" { // e.g. 32,128,512
		concs = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(f)
			if err != nil || n < 2 {
				b.Fatalf("KBRIDGE_BENCH_CONCURRENCY %q: want numbers ≥ 2, comma-separated", v)
			}
			concs = append(concs, n)
		}
	}
	for _, conc := range concs {
		b.Run("concurrency="+strconv.Itoa(conc), func(b *testing.B) { benchSlowBeside(b, conc) })
	}
}

func benchSlowBeside(b *testing.B, conc int) {
	// Enough records that the fast partition runs for about a second or
	// more, and that the 500 ms partition keeps its share of the slots busy
	// for longer than that (conc/2 slots × 2 records/s each).
	records, otherRecords := max(20000, 250*conc), max(2000, 10*conc)
	held, heldOther := map[string][]float64{}, map[string][]float64{}
	rate := func(mode string) float64 {
		e := newBenchEnv(b, len(mode))
		ss := e.streams(b, 2)
		fast, other := ss[0], ss[1]
		var done atomic.Int64
		var busyFast, busyOther atomic.Int64 // handler time, ns
		n := conc
		if mode == "alone-half" {
			n = conc / 2
		}
		cfg := Config{Concurrency: n, MaxDeliveries: 1000, Handler: func(ctx context.Context, m *Message) error {
			t0 := time.Now()
			if m.Stream == other {
				switch mode {
				case "slow":
					time.Sleep(500 * time.Millisecond)
					busyOther.Add(int64(time.Since(t0)))
					return nil
				case "failing":
					return errors.New("down")
				}
			}
			time.Sleep(time.Millisecond)
			done.Add(1)
			busyFast.Add(int64(time.Since(t0)))
			return nil
		}}
		if mode == "slow" || mode == "failing" {
			e.add(b, other, 0, otherRecords)
		}
		e.add(b, fast, 0, records)
		took := e.run(b, cfg, func() bool { return done.Load() >= int64(records) })
		// Slots held on average over the run (handler time / wall time;
		// a 500 ms handler still running at the end is not counted).
		held[mode] = append(held[mode], float64(busyFast.Load())/float64(took))
		heldOther[mode] = append(heldOther[mode], float64(busyOther.Load())/float64(took))
		return float64(records) / took.Seconds()
	}
	var alone, half, slow, failing []float64
	for range 3 {
		alone = append(alone, rate("alone"))
		half = append(half, rate("alone-half"))
		slow = append(slow, rate("slow"))
		failing = append(failing, rate("failing"))
	}
	a, ah := median(alone), median(half)
	b.Logf("concurrency %d: 1 ms partition alone: %.0f records/s (with %d slots: %.0f, %.2f of alone); beside a 500 ms partition: %.0f (%.2f of alone, %.2f of alone with its share of %d slots); beside a failing partition: %.0f (%.2f)",
		conc, a, conc/2, ah, ah/a, median(slow), median(slow)/a, median(slow)/ah, conc/2, median(failing), median(failing)/a)
	b.Logf("concurrency %d: slots held on average by the fast partition alone %.0f, with half the slots %.0f, beside the 500 ms one %.0f (the 500 ms one %.0f), beside the failing one %.0f",
		conc, median(held["alone"]), median(held["alone-half"]), median(held["slow"]), median(heldOther["slow"]), median(held["failing"]))
	b.ReportMetric(median(slow)/a, "slow-beside/alone")
	b.ReportMetric(median(slow)/ah, "slow-beside/alone-half-slots")
	b.ReportMetric(ah/a, "alone-half-slots/alone")
	b.ReportMetric(median(failing)/a, "failing-beside/alone")
}

// BenchmarkSchedLittle: Little's-law efficiency of one worker, handler =
// sleep 10 ms, concurrency N: throughput / (N / 10 ms), beside a plain
// goroutine pool of N doing the same sleeps (the ceiling of the handler
// itself on this machine). The records are in Redis before the worker
// starts, spread over 8 partitions.
func BenchmarkSchedLittle(b *testing.B) {
	const sleep = 10 * time.Millisecond
	for _, n := range []int{32, 128, 512} {
		records := n * 200 // 2 s at the ideal rate
		ideal := float64(n) / sleep.Seconds()
		e := newBenchEnv(b, n)
		ss := e.streams(b, 8)
		for i, s := range ss {
			e.add(b, s, 0, records/len(ss)+boolInt(i < records%len(ss)))
		}
		var done atomic.Int64
		cfg := Config{Concurrency: n, ReadAhead: benchRA(n), Handler: func(context.Context, *Message) error {
			time.Sleep(sleep)
			done.Add(1)
			return nil
		}}
		took := e.run(b, cfg, func() bool { return done.Load() >= int64(records) })
		x := float64(records) / took.Seconds()

		// the ceiling: N goroutines taking jobs from a channel
		jobs := make(chan struct{}, records)
		for range records {
			jobs <- struct{}{}
		}
		close(jobs)
		start := time.Now()
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				for range jobs {
					time.Sleep(sleep)
				}
			})
		}
		wg.Wait()
		pool := float64(records) / time.Since(start).Seconds()
		b.Logf("N=%d: worker %.0f records/s = %.3f of ideal %.0f; goroutine pool %.0f = %.3f of ideal", n, x, x/ideal, ideal, pool, pool/ideal)
		b.ReportMetric(x/ideal, "efficiency-N"+strconv.Itoa(n))
		b.ReportMetric(pool/ideal, "pool-N"+strconv.Itoa(n))
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func benchRA(n int) int {
	if v, err := strconv.Atoi(os.Getenv("BENCH_RA_FACTOR")); err == nil {
		return n * v
	}
	return 0
}
