package main

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/bench"
)

// hotResult is 8-i.
type hotResult struct {
	Records     int           `json:"records"`
	Concurrency int           `json:"concurrency"`
	Handler     string        `json:"handler"`
	Window      float64       `json:"window_s"`
	One         bench.Summary `json:"one"`   // records/s, 1-partition topic
	Many        bench.Summary `json:"many"`  // records/s, 1,000-partition topic, all records in p0
	Ratio       bench.Summary `json:"ratio"` // many / one per round
	Drained     bool          `json:"drained"`
	Profile     string        `json:"profile,omitempty"`
}

func runHotPartition(e *env) (any, error) {
	n := pick(e, 150000, 40000)
	one, many := e.name("hot1"), e.name("hot1000")
	defer e.k.DeleteTopics(e.ctx, one, many)
	if err := e.k.CreateTopic(e.ctx, one, 1); err != nil {
		return nil, err
	}
	if err := e.k.CreateTopic(e.ctx, many, 1000); err != nil {
		return nil, err
	}
	for _, t := range []string{one, many} {
		if err := e.k.Produce(e.ctx, t, []int{0}, n, 100); err != nil {
			return nil, err
		}
	}
	r := hotResult{Records: n, Concurrency: 32, Handler: "sleep 1 ms", Window: pick(e, 10.0, 5.0)}
	spec, args := "default=sleep:1ms", []string{"--concurrency", "32"}
	win := time.Duration(r.Window * float64(time.Second))
	var ones, manys, ratios []float64
	for round := range e.rounds {
		rates := map[string]float64{}
		order := []string{one, many}
		if round%2 == 1 {
			order = []string{many, one}
		}
		for _, t := range order {
			w, err := e.workerWindow([]string{t}, spec, args, 2*time.Second, win, "", int64(n), "")
			if err != nil {
				return r, err
			}
			rates[t] = w.Rate
			r.Drained = r.Drained || w.Drained
		}
		e.logf("8-i round %d: 1 partition %.0f/s, 1,000 partitions %.0f/s: ratio %.2f", round+1, rates[one], rates[many], rates[many]/rates[one])
		ones, manys, ratios = append(ones, rates[one]), append(manys, rates[many]), append(ratios, rates[many]/rates[one])
	}
	r.One, r.Many, r.Ratio = bench.Summarize(ones), bench.Summarize(manys), bench.Summarize(ratios)
	if r.Ratio.Median < 0.8 {
		path := e.profilePath("8-i-worker-1000-partitions.txt")
		if _, err := e.workerWindow([]string{many}, spec, args, 2*time.Second, win, "", int64(n), path); err == nil {
			r.Profile = path
		}
	}
	return r, nil
}

// holResult is 8-ii.
type holResult struct {
	Fast      int           `json:"fast_records"`
	Handler   string        `json:"handler"`
	Window    float64       `json:"window_s"`
	Alone     bench.Summary `json:"alone"`      // the 1 ms partition's records/s alone
	Slow      bench.Summary `json:"slow"`       // beside a 500 ms partition
	Fail      bench.Summary `json:"fail"`       // beside a failing partition
	SlowRatio bench.Summary `json:"slow_ratio"` // slow / alone per round
	FailRatio bench.Summary `json:"fail_ratio"` // fail / alone per round
	SlowDone  bench.Summary `json:"slow_done"`  // records of the 500 ms partition handled in the window
	FailCalls bench.Summary `json:"fail_calls"` // failed handler calls of the failing partition in the window
	Profile   string        `json:"profile,omitempty"`
}

func runHeadOfLine(e *env) (any, error) {
	fast := pick(e, 150000, 50000)
	alone, slow, fail := e.name("alone"), e.name("slow"), e.name("fail")
	defer e.k.DeleteTopics(e.ctx, alone, slow, fail)
	for _, t := range []string{alone, slow, fail} {
		if err := e.k.CreateTopic(e.ctx, t, 2); err != nil {
			return nil, err
		}
		if err := e.k.Produce(e.ctx, t, []int{1}, fast, 100); err != nil {
			return nil, err
		}
	}
	for _, t := range []string{slow, fail} {
		if err := e.k.Produce(e.ctx, t, []int{0}, 5000, 100); err != nil {
			return nil, err
		}
	}
	r := holResult{Fast: fast, Handler: "1 ms; partition 0: 500 ms or failing; worker defaults (concurrency 16)", Window: pick(e, 10.0, 5.0)}
	spec := fmt.Sprintf("default=sleep:1ms,%s/0=sleep:500ms,%s/0=fail", slow, fail)
	win := time.Duration(r.Window * float64(time.Second))
	var as, ss, fs, sr, fr, sd, fc []float64
	for round := range e.rounds {
		rates := map[string]float64{}
		order := []string{alone, slow, fail}
		order = append(order[round%3:], order[:round%3]...)
		for _, t := range order {
			w, err := e.workerWindow([]string{t}, spec, nil, 2*time.Second, win, t+"/1", int64(fast), "")
			if err != nil {
				return r, err
			}
			rates[t] = float64(w.Per[t+"/1"]) / w.Seconds
			switch t {
			case slow:
				sd = append(sd, float64(w.Per[t+"/0"]))
			case fail:
				fc = append(fc, float64(w.Worker["failed"]))
			}
		}
		e.logf("8-ii round %d: fast partition alone %.0f/s, beside 500 ms %.0f/s (%.2f), beside failing %.0f/s (%.2f)", round+1,
			rates[alone], rates[slow], rates[slow]/rates[alone], rates[fail], rates[fail]/rates[alone])
		as, ss, fs = append(as, rates[alone]), append(ss, rates[slow]), append(fs, rates[fail])
		sr, fr = append(sr, rates[slow]/rates[alone]), append(fr, rates[fail]/rates[alone])
	}
	r.Alone, r.Slow, r.Fail, r.SlowRatio, r.FailRatio = bench.Summarize(as), bench.Summarize(ss), bench.Summarize(fs), bench.Summarize(sr), bench.Summarize(fr)
	r.SlowDone, r.FailCalls = bench.Summarize(sd), bench.Summarize(fc)
	if r.SlowRatio.Median < 0.8 || r.FailRatio.Median < 0.8 {
		t := slow
		if r.FailRatio.Median < r.SlowRatio.Median {
			t = fail
		}
		path := e.profilePath("8-ii-worker.txt")
		if _, err := e.workerWindow([]string{t}, spec, nil, 2*time.Second, win, t+"/1", int64(fast), path); err == nil {
			r.Profile = path
		}
	}
	return r, nil
}

// reclaimResult is 8-iii.
type reclaimResult struct {
	Visibility float64       `json:"visibility_s"`
	Reclaim    float64       `json:"reclaim_s"`
	Target     float64       `json:"target_s"`
	Seconds    bench.Summary `json:"seconds"`   // SIGKILL → no entry pending under the dead consumer
	Pending    bench.Summary `json:"pending"`   // entries the dead worker held
	Saturated  bench.Summary `json:"saturated"` // in-flight / concurrency of the others at the kill
}

func runReclaim(e *env) (any, error) {
	const parts, conc = 4, 16
	n := pick(e, 200000, 100000)
	topic := e.name("reclaim")
	defer e.k.DeleteTopics(e.ctx, topic)
	if err := e.k.CreateTopic(e.ctx, topic, parts); err != nil {
		return nil, err
	}
	if err := e.k.Produce(e.ctx, topic, bench.Partitions(parts), n, 100); err != nil {
		return nil, err
	}
	r := reclaimResult{Visibility: 5, Reclaim: 1, Target: 7}
	var secs, pend, sat []float64
	for round := range e.rounds {
		prefix, group := e.name("r"), e.name("g")
		in, err := e.startIngest("ingest", prefix, group, []string{topic})
		if err != nil {
			return r, err
		}
		var ws []*child
		for i := range 3 {
			w, err := e.startWorker(fmt.Sprintf("worker%d", i+1), prefix, "default=sleep:5ms",
				"--consumer", fmt.Sprintf("w%d", i+1), "--concurrency", strconv.Itoa(conc),
				"--visibility-timeout", "5s", "--reclaim-interval", "1s")
			if err != nil {
				return r, err
			}
			ws = append(ws, w)
		}
		err = waitFor(e.ctx, 5*time.Minute, 50*time.Millisecond, "the first records handled", func() bool {
			return ws[0].counts(e.ctx).Total > 0 && ws[1].counts(e.ctx).Total > 0 && ws[2].counts(e.ctx).Total > 0
		})
		if err != nil {
			return r, err
		}
		sleepCtx(e.ctx, 4*time.Second)
		held := e.pendingOf(prefix, topic, parts, "w1")
		s1, s2 := ws[1].counts(e.ctx).Worker, ws[2].counts(e.ctx).Worker
		ws[0].kill()
		t0 := time.Now()
		err = waitFor(e.ctx, 2*time.Minute, 50*time.Millisecond, "the dead worker's entries reclaimed", func() bool {
			return e.pendingOf(prefix, topic, parts, "w1") == 0
		})
		took := time.Since(t0).Seconds()
		if err != nil {
			return r, err
		}
		total := 0
		for _, w := range ws[1:] {
			total += int(w.counts(e.ctx).Total)
		}
		s := float64(s1["in_flight"]+s2["in_flight"]) / (2 * conc)
		e.logf("8-iii round %d: %d entries of the SIGKILLed worker reclaimed in %.2fs (others %.0f%% busy at the kill)", round+1, held, took, 100*s)
		secs, pend, sat = append(secs, took), append(pend, float64(held)), append(sat, s)
		for _, w := range ws[1:] {
			w.stop()
		}
		in.stop()
		e.cleanRedis(prefix)
	}
	r.Seconds, r.Pending, r.Saturated = bench.Summarize(secs), bench.Summarize(pend), bench.Summarize(sat)
	return r, nil
}

// pendingOf counts the entries pending under consumer in the streams.
func (e *env) pendingOf(prefix, topic string, parts int, consumer string) int {
	n := 0
	for p := range parts {
		res, err := e.rdb.XPendingExt(e.ctx, &redis.XPendingExtArgs{Stream: streamKey(prefix, topic, p), Group: "workers",
			Start: "-", End: "+", Count: 100000, Consumer: consumer}).Result()
		if err == nil {
			n += len(res)
		}
	}
	return n
}

// littleResult is 8-iv at one N.
type littleResult struct {
	N          int           `json:"n"`
	Ideal      float64       `json:"ideal"`      // N / 10 ms
	Worker     bench.Summary `json:"worker"`     // records/s
	Pool       bench.Summary `json:"pool"`       // sleeps/s of a plain goroutine pool
	Efficiency bench.Summary `json:"efficiency"` // worker / ideal
	PoolEff    bench.Summary `json:"pool_eff"`   // pool / ideal
	Target     float64       `json:"target,omitempty"`
	Drained    bool          `json:"drained"`
	Profile    string        `json:"profile,omitempty"`
	// Where the worker's time goes: X / ideal = busy × 10 ms / sleep.
	Busy      bench.Summary `json:"busy"`       // mean fraction of the N slots running a handler
	Sleep     bench.Summary `json:"sleep_ms"`   // mean time a handler's 10 ms sleep took in the worker process (ms)
	PoolSleep bench.Summary `json:"pool_sleep"` // the same in the goroutine pool (ms)
}

func runLittle(e *env) (any, error) {
	const parts = 8
	n := pick(e, 600000, 150000)
	topic := e.name("little")
	defer e.k.DeleteTopics(e.ctx, topic)
	if err := e.k.CreateTopic(e.ctx, topic, parts); err != nil {
		return nil, err
	}
	if err := e.k.Produce(e.ctx, topic, bench.Partitions(parts), n, 100); err != nil {
		return nil, err
	}
	win := pick(e, 8*time.Second, 4*time.Second)
	ns := []int{32, 128, 512}
	targets := map[int]float64{128: 0.97, 512: 0.9}
	wr, pr := map[int][]float64{}, map[int][]float64{}
	busy, slept, pslept := map[int][]float64{}, map[int][]float64{}, map[int][]float64{}
	drained := map[int]bool{}
	for round := range e.rounds {
		for i := range ns {
			c := ns[(i+round)%len(ns)]
			ideal := float64(c) / 0.010
			p, ps := sleepPool(c, 10*time.Millisecond, win)
			w, err := e.workerWindow([]string{topic}, "default=sleep:10ms", []string{"--concurrency", strconv.Itoa(c)}, 2*time.Second, win, "", int64(n), "")
			if err != nil {
				return nil, err
			}
			drained[c] = drained[c] || w.Drained
			e.logf("8-iv round %d N=%d: worker %.0f/s (%.3f of ideal; slots busy %.4f, sleep %v), goroutine pool %.0f/s (%.3f; sleep %v)",
				round+1, c, w.Rate, w.Rate/ideal, w.BusyMean/float64(c), w.SleepMean, p, p/ideal, ps)
			wr[c], pr[c] = append(wr[c], w.Rate), append(pr[c], p)
			busy[c] = append(busy[c], w.BusyMean/float64(c))
			slept[c] = append(slept[c], w.SleepMean.Seconds()*1000)
			pslept[c] = append(pslept[c], ps.Seconds()*1000)
		}
	}
	var out []littleResult
	for _, c := range ns {
		ideal := float64(c) / 0.010
		r := littleResult{N: c, Ideal: ideal, Worker: bench.Summarize(wr[c]), Pool: bench.Summarize(pr[c]), Target: targets[c], Drained: drained[c]}
		var eff, peff []float64
		for i := range wr[c] {
			eff, peff = append(eff, wr[c][i]/ideal), append(peff, pr[c][i]/ideal)
		}
		r.Efficiency, r.PoolEff = bench.Summarize(eff), bench.Summarize(peff)
		r.Busy, r.Sleep, r.PoolSleep = bench.Summarize(busy[c]), bench.Summarize(slept[c]), bench.Summarize(pslept[c])
		if r.Target > 0 && r.Efficiency.Median < r.Target {
			path := e.profilePath(fmt.Sprintf("8-iv-worker-N%d.txt", c))
			if _, err := e.workerWindow([]string{topic}, "default=sleep:10ms", []string{"--concurrency", strconv.Itoa(c)}, 2*time.Second, win, "", int64(n), path); err == nil {
				r.Profile = path
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// sleepPool runs n goroutines that each sleep d in a loop for window and
// returns the sleeps completed per second, the ceiling of the handler
// itself on this machine, and the mean time a sleep really took.
func sleepPool(n int, d, window time.Duration) (float64, time.Duration) {
	var done, sleptNS atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				time.Sleep(d)
				sleptNS.Add(int64(time.Since(t0)))
				done.Add(1)
			}
		}()
	}
	t0 := time.Now()
	time.Sleep(window)
	got := done.Load()
	took := time.Since(t0)
	close(stop)
	wg.Wait()
	return float64(got) / took.Seconds(), time.Duration(sleptNS.Load() / max(done.Load(), 1))
}
