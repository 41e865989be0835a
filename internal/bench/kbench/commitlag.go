package main

import (
	"context"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/internal/bench"
	"github.com/kbridge/kbridge/internal/wire"
)

// runCommitLag (10f) measures, for every offset, the time from the moment
// it became contiguously acknowledged (it and every offset below it XACKed:
// the benchmark is the worker, acking each read batch in random order) to
// the moment the ingest's Kafka commit covered it (OffsetFetch polled every
// 10 ms), while records are produced at a steady rate.
func runCommitLag(e *env) (any, error) {
	const parts = 4
	r := lagResult{Partitions: parts, Rate: 2000, Seconds: pick(e, 40.0, 15.0), CommitInterval: 1, Target: 1.2, PollMs: 10}
	topic := e.name("lag")
	defer e.k.DeleteTopics(e.ctx, topic)
	if err := e.k.CreateTopic(e.ctx, topic, parts); err != nil {
		return nil, err
	}
	prefix, group := e.name("l"), e.name("g")
	defer e.cleanRedis(prefix)
	in, err := e.startIngest("ingest", prefix, group, []string{topic}, "--commit-interval", "1s")
	if err != nil {
		return nil, err
	}
	defer in.stop()
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	var mu sync.Mutex
	ackAt := make([][]time.Time, parts)
	commitAt := make([][]time.Time, parts)
	set := func(s [][]time.Time, p int, o int64, t time.Time) {
		for int64(len(s[p])) <= o {
			s[p] = append(s[p], time.Time{})
		}
		s[p][o] = t
	}
	var wg sync.WaitGroup
	// The worker: read, then XACK one by one in random order.
	wg.Add(1)
	go func() {
		defer wg.Done()
		keys := make([]string, 0, 2*parts)
		for p := range parts {
			keys = append(keys, streamKey(prefix, topic, p))
		}
		for range parts {
			keys = append(keys, ">")
		}
		for ctx.Err() == nil {
			res, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: "lag", Streams: keys, Count: 200, Block: 100 * time.Millisecond}).Result()
			if err != nil {
				if err != redis.Nil {
					sleepCtx(ctx, 100*time.Millisecond)
				}
				continue
			}
			type ref struct {
				key, id string
				p       int
				off     int64
			}
			var refs []ref
			for _, s := range res {
				p := partitionOf(s.Stream)
				for _, m := range s.Messages {
					off, err := wire.ParseID(m.ID)
					if err == nil {
						refs = append(refs, ref{s.Stream, m.ID, p, off})
					}
				}
			}
			rand.Shuffle(len(refs), func(i, j int) { refs[i], refs[j] = refs[j], refs[i] })
			for _, x := range refs {
				if err := e.rdb.XAck(ctx, x.key, "workers", x.id).Err(); err != nil {
					continue
				}
				now := time.Now()
				mu.Lock()
				set(ackAt, x.p, x.off, now)
				mu.Unlock()
			}
		}
	}()
	// The commit poller.
	wg.Add(1)
	go func() {
		defer wg.Done()
		last := make([]int64, parts)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for ctx.Err() == nil {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			c, err := e.k.Committed(ctx, group, topic, parts)
			if err != nil {
				continue
			}
			now := time.Now()
			mu.Lock()
			for p := range parts {
				for o := last[p]; o < c[p]; o++ {
					set(commitAt, p, o, now)
				}
				last[p] = max(last[p], c[p])
			}
			mu.Unlock()
		}
	}()
	// The producer: a steady rate, 20 writes a second.
	w := &kafka.Writer{Addr: kafka.TCP(e.brokers...), Topic: topic, Balancer: &kafka.RoundRobin{}, BatchTimeout: time.Millisecond, BatchSize: 1000}
	defer w.Close()
	start := time.Now()
	value := []byte(strings.Repeat("x", 100))
	tick := time.NewTicker(50 * time.Millisecond)
	for i := 0; time.Since(start) < time.Duration(r.Seconds*float64(time.Second)) && e.ctx.Err() == nil; i++ {
		<-tick.C
		msgs := make([]kafka.Message, r.Rate/20)
		for j := range msgs {
			msgs[j] = kafka.Message{Key: []byte("k" + strconv.Itoa(i*len(msgs)+j)), Value: value}
		}
		if err := w.WriteMessages(e.ctx, msgs...); err != nil {
			e.logf("10f: produce: %v", err)
		}
	}
	tick.Stop()
	ends, err := e.k.LogEnds(e.ctx, topic, parts)
	if err != nil {
		return nil, err
	}
	if err := waitFor(e.ctx, time.Minute, 50*time.Millisecond, "everything committed", func() bool { return e.allCommitted(group, topic, ends) }); err != nil {
		return nil, err
	}
	sleepCtx(e.ctx, 50*time.Millisecond)
	cancel()
	wg.Wait()
	warm := start.Add(5 * time.Second)
	var lags []float64
	for p := range parts {
		var contig time.Time
		for o := range ackAt[p] {
			a := ackAt[p][o]
			if a.IsZero() {
				break // not acked: nothing above it is contiguous
			}
			if a.After(contig) {
				contig = a
			}
			if o >= len(commitAt[p]) || commitAt[p][o].IsZero() || contig.Before(warm) {
				continue
			}
			lags = append(lags, commitAt[p][o].Sub(contig).Seconds())
		}
	}
	r.Offsets = len(lags)
	if len(lags) == 0 {
		return r, errNoData
	}
	r.P50, r.P90, r.P99, r.Max = percentiles(lags)
	e.logf("10f: commit lag over %d offsets: p50 %.3fs, p90 %.3fs, p99 %.3fs, max %.3fs (commit interval 1s)", r.Offsets, r.P50, r.P90, r.P99, r.Max)
	_ = bench.Summary{}
	return r, nil
}

func partitionOf(key string) int {
	i := strings.LastIndexByte(key, ':')
	j := strings.LastIndexByte(key, '}')
	p, _ := strconv.Atoi(key[i+1 : j])
	return p
}
