package worker

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/kbridge/kbridge/internal/wire"
)

// slot runs t, then whatever the scheduler gives this handler slot next,
// until it gives the slot back. hctx is given to the handlers.
func (w *Worker) slot(hctx context.Context, t *task) {
	defer w.handlers.Done()
	for t != nil {
		res, at, took := w.attempt(hctx, t)
		next, letGo := w.sched.finish(t, took, res, at)
		if letGo {
			// Stopping: the retry will not happen here. The entry stays
			// pending; it is reclaimed after the visibility timeout,
			// with its delivery count.
			w.release(t.he)
		}
		t = next
	}
}

// result is the outcome of one attempt.
type result int

const (
	settled result = iota // acknowledged, dead-lettered, or no longer ours
	handled               // succeeded (and acknowledged): settled too
	retry                 // to be run again at the time given
)

// attempt makes one delivery of t's entry: unless it is the entry's first
// delivery, started within VisibilityTimeout/2 of its read, records the run (and the delivery, if it is a retry after a
// failure) in Redis first, dead-letters it instead if it already ran
// MaxDeliveries times, runs the handler, and
// settles the entry or says when to retry it. A failed entry stays pending
// under this consumer, its lease extended, while it waits for its retry (in
// the scheduler's timer heap, not in a slot). If the worker dies meanwhile,
// another reclaims the entry and finds its runs in Redis (the runs hash,
// start.lua), so the retry budget survives crashes (short of one run: the
// first, unrecorded); a delivery whose handler never started (read ahead by
// a worker that died) costs none of it.
func (w *Worker) attempt(hctx context.Context, t *task) (res result, at time.Time, took time.Duration) {
	m := t.m
	ctx := context.WithoutCancel(hctx) // Redis calls: not cut short by the shutdown timeout
	if !w.owns(t.he) {
		// Its lease was lost while it waited (another worker has the
		// entry), or this consumer holds the entry again under a newer
		// task (it reclaimed it back): this task is stale.
		return settled, at, 0
	}
	// Record the start (startScript) before the handler runs: the dead
	// letter is decided on the runs started, not on the deliveries, so that
	// entries read ahead by a worker that died before starting them are not
	// dead-lettered unrun. A retry after a failure counts a delivery too;
	// a retry after a back-off counts nothing, but the script still asks
	// Redis whether the entry is ours: while it waited, another worker may
	// have taken it (our lease lapsed) and even acknowledged it.
	//
	// The common path costs nothing: an entry delivered for the first
	// time (count 1, read with XREADGROUP >), not retried here, and read
	// less than VisibilityTimeout/2 ago starts without the script and
	// without a record; its first run is implied by its delivery count.
	// Skipping the ownership check is safe only that soon: until its idle
	// time reaches the visibility timeout no worker following the rules
	// may take the entry, and t.he.since is taken after Redis delivered it.
	// An entry that waited longer in the queue (our lease may have lapsed
	// meanwhile: Redis unreachable) goes through the script, which checks
	// that it is still ours. If this worker dies while it runs, the worker
	// that reclaims the entry does not know of that run: an entry whose
	// handler crashes its worker runs at most MaxDeliveries + 1 times (in a
	// group of kbridge workers only; docs/wire.md rule 8).
	run := t.redeliver || t.backoffs == 0
	if run && !t.redeliver && m.Deliveries <= 1 && !t.he.mayHaveRuns && time.Since(t.he.since) < w.cfg.VisibilityTimeout/2 {
		m.Deliveries, t.runs = 1, 1
		return w.run(hctx, t)
	}
	t.he.mayHaveRuns = true
	n, runs, serr := w.startRun(ctx, t, run)
	switch {
	case serr != nil || n < 0:
		if serr != nil {
			w.log.Warn("cannot record the start of a run; leaving the entry to be reclaimed", "stream", m.Stream, "id", m.ID, "err", serr)
		} else {
			w.log.Info("entry taken by another consumer before it started here; not running it", "stream", m.Stream, "id", m.ID)
		}
		w.release(t.he)
		return settled, at, 0
	case run && n == 0:
		w.deadLetter(ctx, m, wire.ReasonMaxDeliveries, fmt.Errorf(
			"started %d times (max %d) without an outcome: the workers that ran it stopped or lost it",
			runs, w.cfg.MaxDeliveries))
		return settled, at, 0
	}
	if t.redeliver {
		t.redeliver = false
		w.stats.retries.Add(1)
	}
	m.Deliveries, t.runs = n, runs
	return w.run(hctx, t)
}

// run runs the handler on t's entry, whose start is accounted for, and
// settles the entry or says when to retry it.
func (w *Worker) run(hctx context.Context, t *task) (res result, at time.Time, took time.Duration) {
	m := t.m
	ctx := context.WithoutCancel(hctx)
	start := time.Now()
	err := w.call(hctx, m)
	took = time.Since(start)
	if err == nil {
		w.stats.processed.Add(1)
		w.acks.add(t.he)
		return handled, at, took
	}
	if hctx.Err() != nil {
		// The shutdown timeout passed and the handler was cancelled: its
		// error says nothing about the record (an exec handler's "signal:
		// killed"). Leave the entry pending, with its delivery count, for
		// another worker to reclaim; never dead-letter it from here, after
		// Run has returned.
		w.release(t.he)
		return settled, at, took
	}
	var (
		perm *PermanentError
		re   *RetryError
	)
	if errors.As(err, &re) {
		if t.transientSince.IsZero() {
			t.transientSince = start
		}
		if time.Since(t.transientSince) >= w.cfg.MaxTransientTime {
			// The downstream has been unavailable for too long: from now
			// on its failures count, so that the entry ends in the
			// dead-letter stream.
			w.log.Warn("downstream unavailable for longer than the max transient time; counting deliveries",
				"stream", m.Stream, "offset", m.Offset, "max_transient_time", w.cfg.MaxTransientTime, "err", err)
			re = nil
		}
	}
	switch {
	case errors.As(err, &perm):
		w.stats.failed.Add(1)
		w.deadLetter(ctx, m, wire.ReasonRejected, err)
		return settled, at, took
	case re != nil:
		// The downstream is unavailable: this stream starts and reads
		// nothing new until the wait is over.
		w.stats.backoffs.Add(1)
		t.backoffs++
		wait := w.sched.backOff(t, re.After, w.cfg.backoff)
		w.log.Info("handler asked to back off", "stream", m.Stream, "offset", m.Offset, "wait", wait, "err", err)
		return retry, time.Now().Add(wait), took
	default:
		w.stats.failed.Add(1)
		if t.runs >= int64(w.cfg.MaxDeliveries) {
			w.deadLetter(ctx, m, wire.ReasonMaxDeliveries, err)
			return settled, at, took
		}
		wait := w.cfg.backoff(m.Deliveries)
		w.log.Info("handler failed; will retry", "stream", m.Stream, "offset", m.Offset,
			"deliveries", m.Deliveries, "runs", t.runs, "retry_in", wait, "err", err)
		t.redeliver = true
		return retry, time.Now().Add(wait), took
	}
}

// startRun runs startScript for t's entry: it records a run (if run) and,
// for a retry after a failure, a delivery; the record is first raised to
// t.runs, the runs this worker knows of (its unrecorded first run). It returns the entry's delivery
// count and runs after that, n = 0 if the entry already ran MaxDeliveries
// times (nothing recorded), n = -1 if this consumer no longer owns it.
func (w *Worker) startRun(ctx context.Context, t *task, run bool) (n, runs int64, err error) {
	m := t.m
	tctx, cancel := context.WithTimeout(ctx, max(w.cfg.VisibilityTimeout/3, time.Second))
	defer cancel()
	flag := func(b bool) int {
		if b {
			return 1
		}
		return 0
	}
	res, err := startScript.Run(tctx, w.rdb, []string{m.Stream, wire.RunsKey(m.Stream, w.cfg.Group)},
		w.cfg.Group, w.cfg.Consumer, m.ID, w.cfg.MaxDeliveries, flag(t.redeliver), flag(run), t.runs).Int64Slice()
	if err != nil {
		return 0, 0, err
	}
	if len(res) != 2 {
		return 0, 0, fmt.Errorf("start.lua: want 2 integers, got %v", res)
	}
	return res[0], res[1], nil
}

// call runs the handler once, turning a panic into a *PanicError.
func (w *Worker) call(ctx context.Context, m *Message) (err error) {
	start := time.Now()
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: debug.Stack()}
			w.log.Error("handler panicked", "stream", m.Stream, "offset", m.Offset, "panic", v)
		}
		if w.cfg.OnHandled != nil {
			w.cfg.OnHandled(m, time.Since(start), err)
		}
	}()
	return w.cfg.Handler(ctx, m)
}

// deadLetter writes m to its partition's dead-letter stream and acknowledges
// it, atomically, if this consumer still holds it; on a Redis error it retries a few times, then leaves the
// entry pending (it will be reclaimed and dead-lettered again).
func (w *Worker) deadLetter(ctx context.Context, m *Message, reason string, cause error) {
	defer w.release(m.held)
	info := wire.DLQInfo{
		Reason:     reason,
		Error:      cause.Error(),
		Group:      w.cfg.Group,
		Consumer:   w.cfg.Consumer,
		Deliveries: m.Deliveries,
		Stream:     m.Stream,
		ID:         m.ID,
		Time:       time.Now(),
	}
	fields := wire.DeadLetterFields(m.fields, info)
	args := append([]any{w.cfg.Group, w.cfg.Consumer, m.ID}, fields...)
	dlq := wire.DLQKey(wire.PartitionStreamOf(m.Stream))
	keys := []string{m.Stream, dlq}
	if m.held.mayHaveRuns || m.Deliveries > 1 {
		keys = append(keys, wire.RunsKey(m.Stream, w.cfg.Group)) // deadletter.lua deletes its record
	}
	bctx := context.WithoutCancel(ctx)
	w.settling(m.held)
	var err error
	for attempt := range 3 {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
		}
		tctx, cancel := context.WithTimeout(bctx, 5*time.Second)
		var n int64
		n, err = deadLetterScript.Run(tctx, w.rdb, keys, args...).Int64()
		cancel()
		if err == nil {
			if n == 1 {
				w.stats.deadLettered.Add(1)
				w.log.Warn("entry dead-lettered", "stream", m.Stream, "id", m.ID, "offset", m.Offset,
					"reason", reason, "deliveries", m.Deliveries, "err", cause)
			} else {
				w.log.Warn("not dead-lettering an entry this consumer no longer holds (acknowledged, or reclaimed by another)",
					"stream", m.Stream, "id", m.ID, "offset", m.Offset, "reason", reason)
			}
			return
		}
	}
	w.log.Error("dead-lettering failed; the entry stays pending", "stream", m.Stream, "id", m.ID, "err", err)
}
