package main

import (
	"fmt"
	"os"
	"os/exec"
	"time"
)

// windowRun is what one run of "ingest + one kbench worker" measured over
// a window after a warm-up.
type windowRun struct {
	Rate    float64          // records handled per second in the window
	Per     map[string]int64 // handled in the window per topic/partition
	Total   int64            // handled from the start to the end of the window
	Seconds float64          // the window's real length
	Worker  map[string]int64 // the worker library's counters at the end
	Drained bool             // the counted records ran out: the window ended early
	// Over the window (kbench worker with a sleep handler): the mean time
	// a handler's sleep really took, and the mean number of slots busy.
	SleepMean time.Duration
	BusyMean  float64
}

// workerWindow starts a fresh ingest (own prefix and group) on topics and
// one kbench worker with spec and args, waits until the worker handled its
// first record, then warmup, and measures the window; counts are polled
// every 100 ms. When the records counted under key (a "topic/partition", or
// "" for all) reach expect before the window ends, the window ends there
// (and starts at the first record if that was still in the warm-up), so a
// fast run is measured over what it had. With profile set, the worker runs
// under a CPU profile whose top is written there.
func (e *env) workerWindow(topics []string, spec string, args []string, warmup, window time.Duration, key string, expect int64, profile string) (windowRun, error) {
	var r windowRun
	prefix, group := e.name("w"), e.name("g")
	defer e.cleanRedis(prefix)
	in, err := e.startIngest("ingest", prefix, group, topics)
	if err != nil {
		return r, err
	}
	defer in.stop()
	var prof string
	if profile != "" {
		prof = profile + ".pprof"
		args = append(args, "--cpuprofile", prof)
	}
	w, err := e.startWorker("worker", prefix, spec, args...)
	if err != nil {
		return r, err
	}
	defer w.stop()
	type sample struct {
		t time.Time
		c counts
	}
	count := func(c counts) int64 {
		if key == "" {
			return c.Total
		}
		return c.Per[key]
	}
	var first sample
	err = waitFor(e.ctx, 5*time.Minute, 50*time.Millisecond, "the first record handled", func() bool {
		if in.exited() || w.exited() {
			return true
		}
		first = sample{time.Now(), w.counts(e.ctx)}
		return first.c.Total > 0
	})
	if err != nil {
		return r, err
	}
	if in.exited() || w.exited() {
		return r, fmt.Errorf("a process exited early: ingest %v (%s), worker %v (%s)", in.err, in.log, w.err, w.log)
	}
	var from, to sample
	for {
		sleepCtx(e.ctx, 100*time.Millisecond)
		s := sample{time.Now(), w.counts(e.ctx)}
		if from.t.IsZero() && s.t.Sub(first.t) >= warmup {
			from = s
		}
		if expect > 0 && count(s.c) >= expect {
			if from.t.IsZero() {
				from = first
			}
			to = s
			r.Drained = true
			break
		}
		if !from.t.IsZero() && s.t.Sub(from.t) >= window || e.ctx.Err() != nil {
			to = s
			break
		}
	}
	r.Seconds = to.t.Sub(from.t).Seconds()
	r.Rate = float64(count(to.c)-count(from.c)) / r.Seconds
	r.Total = to.c.Total
	r.Worker = to.c.Worker
	delta := func(k string) float64 { return float64(to.c.Worker[k] - from.c.Worker[k]) }
	if n := delta("sleeps"); n > 0 {
		r.SleepMean = time.Duration(delta("slept_ns") / n)
	}
	if n := delta("busy_samples"); n > 0 {
		r.BusyMean = delta("busy_sum") / n
	}
	r.Per = map[string]int64{}
	for k, v := range to.c.Per {
		r.Per[k] = v - from.c.Per[k]
	}
	w.stop()
	in.stop()
	if prof != "" {
		if err := e.pprofTop(prof, profile); err != nil {
			e.logf("profile: %v", err)
		}
	}
	return r, nil
}

// pprofTop writes the top of a CPU profile as text.
func (e *env) pprofTop(prof, out string) error {
	defer os.Remove(prof)
	flat, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=40", e.self, prof).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pprof: %v: %s", err, flat)
	}
	cum, err := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=40", e.self, prof).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pprof: %v: %s", err, cum)
	}
	text := "# go tool pprof -top (flat)\n\n" + string(flat) + "\n# go tool pprof -top -cum (where the time goes, callers included)\n\n" + string(cum)
	return os.WriteFile(out, []byte(text), 0o644)
}
