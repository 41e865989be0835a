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
}

// workerWindow starts a fresh ingest (own prefix and group) on topics and
// one kbench worker with spec and args, waits until the worker handled its
// first record, then warmup, and measures the window. With profile set, the
// worker runs under a CPU profile whose top is written there.
func (e *env) workerWindow(topics []string, spec string, args []string, warmup, window time.Duration, profile string) (windowRun, error) {
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
	err = waitFor(e.ctx, 5*time.Minute, 50*time.Millisecond, "the first record handled", func() bool {
		return in.exited() || w.exited() || w.counts(e.ctx).Total > 0
	})
	if err != nil {
		return r, err
	}
	if in.exited() || w.exited() {
		return r, fmt.Errorf("a process exited early: ingest %v (%s), worker %v (%s)", in.err, in.log, w.err, w.log)
	}
	sleepCtx(e.ctx, warmup)
	c0, t0 := w.counts(e.ctx), time.Now()
	sleepCtx(e.ctx, window)
	c1, t1 := w.counts(e.ctx), time.Now()
	r.Seconds = t1.Sub(t0).Seconds()
	r.Rate = float64(c1.Total-c0.Total) / r.Seconds
	r.Total = c1.Total
	r.Worker = c1.Worker
	r.Per = map[string]int64{}
	for k, v := range c1.Per {
		r.Per[k] = v - c0.Per[k]
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
	top, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=40", e.self, prof).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pprof: %v: %s", err, top)
	}
	return os.WriteFile(out, top, 0o644)
}
