package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/bench"
	"github.com/kbridge/kbridge/internal/wire"
)

// ceilingResult is 10a for one record size.
type ceilingResult struct {
	Size       int           `json:"size"`
	Records    int           `json:"records"`
	Partitions int           `json:"partitions"`
	Fetch      bench.Summary `json:"fetch"` // raw kafka-go fetch, records/s
	XAdd       bench.Summary `json:"xadd"`  // raw pipelined XADD, records/s
	// Guarded: the same entries appended as the ingest appends them
	// (bridge.AppendGuarded), no Kafka: the ceiling of the conditional
	// append invariant 1 requires, records/s.
	Guarded bench.Summary `json:"guarded"`
	Ingest  bench.Summary `json:"ingest"` // kbridge ingest, records/s
	Ratio   bench.Summary `json:"ratio"`  // ingest / min(fetch, xadd), per round
	// GuardedRatio: ingest / min(fetch, guarded), per round; GuardCost:
	// guarded / xadd, what the guarded transaction costs against plain XADD.
	GuardedRatio bench.Summary `json:"guarded_ratio"`
	GuardCost    bench.Summary `json:"guard_cost"`
	IngestRSS    bench.Summary `json:"ingest_rss_mib"`
	// Where the time goes: redis-server's CPU (share of a core) while the
	// raw XADD ran and while the ingest ran, and the ingest's own.
	RedisXAdd   bench.Summary `json:"redis_cpu_xadd"`
	RedisGuard  bench.Summary `json:"redis_cpu_guarded"`
	RedisIngest bench.Summary `json:"redis_cpu_ingest"`
	IngestCPU   bench.Summary `json:"ingest_cpu"`
	Profile     string        `json:"profile,omitempty"`
}

func runCeiling(e *env) (any, error) {
	const parts = 8
	var out []ceilingResult
	for _, size := range []int{100, 1024} {
		n := pick(e, 300000, 60000)
		if size >= 1024 {
			n = pick(e, 200000, 40000)
		}
		topic := e.name(fmt.Sprintf("ceil%d", size))
		if err := e.k.CreateTopic(e.ctx, topic, parts); err != nil {
			return out, err
		}
		e.logf("10a: producing %d records of %d bytes to %s", n, size, topic)
		if err := e.k.Produce(e.ctx, topic, bench.Partitions(parts), n, size); err != nil {
			return out, err
		}
		ends, err := e.k.LogEnds(e.ctx, topic, parts)
		if err != nil {
			return out, err
		}
		r := ceilingResult{Size: size, Records: n, Partitions: parts}
		var fetch, xadd, guarded, ingest, ratio, gratio, gcost, rss, rx, rg, ri, ic []float64
		for round := range e.rounds {
			var f, x, g, in float64
			var peak int64
			var cpu cpuShares
			steps := []func() error{
				func() (err error) { f, err = rawFetch(e.ctx, e.brokers[0], topic, ends); return },
				func() (err error) {
					a, _ := bench.ReadProc(e.redisPid)
					x, err = rawXAdd(e, topic, size, ends)
					b, _ := bench.ReadProc(e.redisPid)
					rx = append(rx, bench.CPUShare(a, b))
					return
				},
				func() (err error) {
					a, _ := bench.ReadProc(e.redisPid)
					g, err = rawGuarded(e, topic, size, ends)
					b, _ := bench.ReadProc(e.redisPid)
					rg = append(rg, bench.CPUShare(a, b))
					return
				},
				func() (err error) { in, peak, cpu, err = ingestRate(e, topic, ends, ""); return },
			}
			for i := range steps { // rotate the order each round
				if err := steps[(i+round)%len(steps)](); err != nil {
					return out, err
				}
			}
			ri, ic = append(ri, cpu.redis), append(ic, cpu.ingest)
			e.logf("10a: %d B round %d: fetch %.0f/s, xadd %.0f/s (redis %.0f%% of a core), guarded %.0f/s (redis %.0f%%), ingest %.0f/s (redis %.0f%%, ingest %.0f%%): ratio %.2f, to guarded %.2f",
				size, round+1, f, x, 100*rx[len(rx)-1], g, 100*rg[len(rg)-1], in, 100*cpu.redis, 100*cpu.ingest, in/min(f, x), in/min(f, g))
			fetch, xadd, guarded, ingest = append(fetch, f), append(xadd, x), append(guarded, g), append(ingest, in)
			ratio, gratio, gcost = append(ratio, in/min(f, x)), append(gratio, in/min(f, g)), append(gcost, g/x)
			rss = append(rss, float64(peak)/(1<<20))
		}
		r.Fetch, r.XAdd, r.Ingest, r.Ratio, r.IngestRSS = bench.Summarize(fetch), bench.Summarize(xadd),
			bench.Summarize(ingest), bench.Summarize(ratio), bench.Summarize(rss)
		r.RedisXAdd, r.RedisIngest, r.IngestCPU = bench.Summarize(rx), bench.Summarize(ri), bench.Summarize(ic)
		r.Guarded, r.GuardedRatio, r.GuardCost, r.RedisGuard = bench.Summarize(guarded), bench.Summarize(gratio), bench.Summarize(gcost), bench.Summarize(rg)
		if r.Ratio.Median < 0.8 {
			path := e.profilePath(fmt.Sprintf("10a-ingest-%dB.txt", size))
			if _, _, _, err := ingestRate(e, topic, ends, path); err != nil {
				e.logf("10a: profile run: %v", err)
			} else {
				r.Profile = path
			}
		}
		out = append(out, r)
		e.k.DeleteTopics(e.ctx, topic)
	}
	return out, nil
}

// rawFetch reads every partition of topic up to its end with kafka-go's
// lowest-overhead path (a Conn per partition leader, ReadBatch of 1 MiB),
// all partitions at once, and returns records/s.
func rawFetch(ctx context.Context, broker, topic string, ends map[int]int64) (float64, error) {
	var total int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for p, end := range ends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := fetchPartition(ctx, broker, topic, p, end)
			mu.Lock()
			defer mu.Unlock()
			total += n
			if err != nil && firstErr == nil {
				firstErr = err
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if firstErr != nil {
		return 0, firstErr
	}
	return float64(total) / took.Seconds(), nil
}

func fetchPartition(ctx context.Context, broker, topic string, p int, end int64) (int64, error) {
	conn, err := kafka.DialLeader(ctx, "tcp", broker, topic, p)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	var n int64
	for off := int64(0); off < end; {
		if _, err := conn.Seek(off, kafka.SeekAbsolute); err != nil {
			return n, err
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := conn.ReadBatchWith(kafka.ReadBatchConfig{MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 500 * time.Millisecond})
		for {
			m, err := b.ReadMessage()
			if err != nil {
				break
			}
			if m.Offset >= off {
				n++
				off = m.Offset + 1
				_ = m.Key
				_ = m.Value
			}
		}
		if err := b.Close(); err != nil && !errors.Is(err, io.EOF) {
			return n, fmt.Errorf("fetch %s/%d at %d: %w", topic, p, off, err)
		}
	}
	return n, nil
}

// rawXAdd appends the same entries (the wire codec's fields, IDs <offset>-1,
// keys k<i>, values of size bytes) with plain XADD, pipelined 5,000 per
// round trip, one goroutine per partition, and returns records/s.
func rawXAdd(e *env, topic string, size int, ends map[int]int64) (float64, error) {
	return rawAppend(e, "xadd", topic, size, ends, func(key string, recs []wire.Record) error {
		pipe := e.rdb.Pipeline()
		for i := range recs {
			pipe.XAdd(e.ctx, &redis.XAddArgs{Stream: key, ID: wire.EntryID(recs[i].Offset), Values: recs[i].AppendFields(nil)})
		}
		_, err := pipe.Exec(e.ctx)
		return err
	})
}

// rawGuarded appends the same entries the way invariant 1 requires and the
// ingest does: bridge.AppendGuarded, guarded MULTI/EXEC transactions of
// --append-batch's default, each chunk of 5,000 one after the other, one
// goroutine per partition; it returns records/s. The ceiling of a
// conditional append on this Redis: the ingest cannot beat it, whatever
// Kafka does.
func rawGuarded(e *env, topic string, size int, ends map[int]int64) (float64, error) {
	top := map[string]int64{}
	var mu sync.Mutex
	return rawAppend(e, "guard", topic, size, ends, func(key string, recs []wire.Record) error {
		mu.Lock()
		expected, ok := top[key]
		mu.Unlock()
		if !ok {
			expected = -1
			if err := e.rdb.XGroupCreateMkStream(e.ctx, key, "g", "0").Err(); err != nil {
				return err
			}
		}
		_, err := bridge.AppendGuarded(e.ctx, e.rdb, key, bridge.DefaultAppendBatch, expected, recs)
		mu.Lock()
		top[key] = recs[len(recs)-1].Offset
		mu.Unlock()
		return err
	})
}

// rawAppend runs appendChunk over every partition's records in chunks of
// 5,000, one goroutine per partition, on streams under a fresh prefix
// (removed after), and returns records/s.
func rawAppend(e *env, name, topic string, size int, ends map[int]int64, appendChunk func(key string, recs []wire.Record) error) (float64, error) {
	prefix := e.name(name)
	defer e.cleanRedis(prefix)
	value := make([]byte, size)
	for i := range value {
		value[i] = 'x'
	}
	var total int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for p, end := range ends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := streamKey(prefix, topic, p)
			const chunk = 5000
			recs := make([]wire.Record, 0, chunk)
			var n int64
			var err error
			for off := int64(0); off < end && err == nil; off += chunk {
				recs = recs[:0]
				for o := off; o < min(off+chunk, end); o++ {
					recs = append(recs, wire.Record{Topic: topic, Partition: p, Offset: o, Time: time.UnixMilli(1700000000000 + o),
						Key: []byte("k" + strconv.FormatInt(o, 10)), Value: value})
				}
				if err = appendChunk(key, recs); err == nil {
					n += int64(len(recs))
				}
			}
			mu.Lock()
			defer mu.Unlock()
			total += n
			if err != nil && firstErr == nil {
				firstErr = err
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if firstErr != nil {
		return 0, firstErr
	}
	return float64(total) / took.Seconds(), nil
}

// cpuShares is the CPU of redis-server and of the ingest, each as a share
// of one core, over the same window.
type cpuShares struct{ redis, ingest float64 }

// ingestRate runs "kbridge ingest" (or, with profile set, kbench ingest
// under a CPU profile, whose top is written to profile) over the whole
// topic with no backpressure and returns records/s from the first entry in
// Redis to the last (the group join excluded), the peak RSS, and the CPU of
// Redis and of the ingest over that window.
func ingestRate(e *env, topic string, ends map[int]int64, profile string) (float64, int64, cpuShares, error) {
	var cpu cpuShares
	prefix, group := e.name("ing"), e.name("grp")
	defer e.cleanRedis(prefix)
	var total int64
	for _, end := range ends {
		total += end
	}
	var c *child
	var err error
	var prof string
	if profile == "" {
		c, err = e.startIngest("ingest", prefix, group, []string{topic}, "--partition-cap", "1000000000")
	} else {
		prof = profile + ".pprof"
		c, err = e.start("ingest-prof", e.self, "ingest", "--brokers", e.brokers[0], "--redis", e.redisAddr,
			"--prefix", prefix, "--group", group, "--topics", topic, "--partition-cap", "1000000000", "--cpuprofile", prof)
	}
	if err != nil {
		return 0, 0, cpu, err
	}
	defer c.stop()
	var t0 time.Time
	var n0, peak int64
	var r0, i0 bench.ProcSample
	err = waitFor(e.ctx, 5*time.Minute, 20*time.Millisecond, "the ingest to append everything", func() bool {
		if c.exited() {
			return true
		}
		peak = max(peak, c.sample().RSS)
		n := e.xlenSum(prefix, topic, len(ends))
		if n > 0 && t0.IsZero() {
			t0, n0 = time.Now(), n
			r0, _ = bench.ReadProc(e.redisPid)
			i0 = c.sample()
		}
		return n >= total
	})
	t1 := time.Now()
	r1, _ := bench.ReadProc(e.redisPid)
	i1 := c.sample()
	cpu = cpuShares{redis: bench.CPUShare(r0, r1), ingest: bench.CPUShare(i0, i1)}
	if err != nil {
		return 0, 0, cpu, err
	}
	if c.exited() {
		return 0, 0, cpu, fmt.Errorf("ingest exited: %v (log %s)", c.err, c.log)
	}
	c.stop()
	if prof != "" {
		if err := e.pprofTop(prof, profile); err != nil {
			return 0, 0, cpu, err
		}
	}
	if t1.Sub(t0) <= 0 || n0 >= total {
		return 0, peak, cpu, fmt.Errorf("ingest too fast to measure: %d of %d records at the first poll", n0, total)
	}
	return float64(total-n0) / t1.Sub(t0).Seconds(), peak, cpu, nil
}
