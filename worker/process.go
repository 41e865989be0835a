package worker

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/kbridge/kbridge/internal/wire"
)

// start runs the handler of m in a goroutine that owns one handler slot
// (already taken) and gives it back when done.
func (w *Worker) start(ctx, hctx context.Context, m *Message) {
	w.handlers.Add(1)
	w.stats.running.Add(1)
	go func() {
		defer func() {
			w.stats.running.Add(-1)
			<-w.slots
			w.handlers.Done()
		}()
		w.process(ctx, hctx, m)
	}()
}

// process delivers m until it succeeds, is dead-lettered, or the worker
// stops. ctx is the worker's run context (done: stop retrying); hctx is
// given to the handler (done: the shutdown timeout passed).
//
// A failed entry stays pending under this consumer, its lease extended, while
// the worker waits for the backoff; then the retry counts a delivery in Redis
// (redeliverScript). If the worker dies meanwhile, another reclaims the entry
// with its delivery count, so the retry budget survives crashes.
func (w *Worker) process(ctx, hctx context.Context, m *Message) {
	if m.Deliveries > int64(w.cfg.MaxDeliveries) {
		w.deadLetter(ctx, m, wire.ReasonMaxDeliveries, fmt.Errorf(
			"delivered %d times (max %d) without an outcome: the workers that held it stopped or lost it",
			m.Deliveries, w.cfg.MaxDeliveries))
		return
	}
	var (
		backoffs       int64
		transientSince time.Time // first transient failure (RetryError)
	)
	for {
		err := w.call(hctx, m)
		if err == nil {
			w.stats.processed.Add(1)
			w.acks.add(m.Stream, m.ID)
			return
		}
		if hctx.Err() != nil {
			// The shutdown timeout passed and the handler was cancelled:
			// its error says nothing about the record (an exec handler's
			// "signal: killed"). Leave the entry pending, with its delivery
			// count, for another worker to reclaim; never dead-letter it
			// from here, after Run has returned.
			w.release(m.Stream, m.ID)
			return
		}
		var (
			perm  *PermanentError
			retry *RetryError
			wait  time.Duration
		)
		if errors.As(err, &retry) {
			if transientSince.IsZero() {
				transientSince = time.Now()
			}
			if time.Since(transientSince) >= w.cfg.MaxTransientTime {
				// The downstream has been unavailable for too long:
				// from now on its failures count, so that the entry
				// ends in the dead-letter stream.
				w.log.Warn("downstream unavailable for longer than the max transient time; counting deliveries",
					"stream", m.Stream, "offset", m.Offset, "max_transient_time", w.cfg.MaxTransientTime, "err", err)
				retry = nil
			}
		}
		switch {
		case errors.As(err, &perm):
			w.stats.failed.Add(1)
			w.deadLetter(ctx, m, wire.ReasonRejected, err)
			return
		case retry != nil:
			w.stats.backoffs.Add(1)
			backoffs++
			wait = retry.After
			if wait <= 0 {
				wait = w.cfg.backoff(backoffs)
			}
			// The downstream is overloaded: read nothing new meanwhile.
			if until := time.Now().Add(wait).UnixNano(); until > w.pauseUntil.Load() {
				w.pauseUntil.Store(until)
			}
			w.log.Info("handler asked to back off", "stream", m.Stream, "offset", m.Offset, "wait", wait, "err", err)
		default:
			w.stats.failed.Add(1)
			if m.Deliveries >= int64(w.cfg.MaxDeliveries) {
				w.deadLetter(ctx, m, wire.ReasonMaxDeliveries, err)
				return
			}
			wait = w.cfg.backoff(m.Deliveries)
			w.log.Info("handler failed; will retry", "stream", m.Stream, "offset", m.Offset,
				"deliveries", m.Deliveries, "retry_in", wait, "err", err)
		}
		sleep(ctx, wait)
		if ctx.Err() != nil {
			// Stopping: leave the entry pending. It is reclaimed after the
			// visibility timeout, with its delivery count.
			w.release(m.Stream, m.ID)
			return
		}
		if retry == nil {
			n, err := redeliverScript.Run(ctx, w.rdb, []string{m.Stream}, w.cfg.Group, w.cfg.Consumer, m.ID).Int64()
			if err != nil || n < 0 {
				// Redis unreachable, or the entry is no longer ours: leave
				// it to the reclaim.
				w.log.Warn("cannot count the retry; leaving the entry to be reclaimed", "stream", m.Stream, "id", m.ID, "err", err)
				w.release(m.Stream, m.ID)
				return
			}
			m.Deliveries = n
			w.stats.retries.Add(1)
		}
	}
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
	defer w.release(m.Stream, m.ID)
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
	bctx := context.WithoutCancel(ctx)
	w.settling(m.Stream, m.ID)
	var err error
	for attempt := range 3 {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
		}
		tctx, cancel := context.WithTimeout(bctx, 5*time.Second)
		var n int64
		n, err = deadLetterScript.Run(tctx, w.rdb, []string{m.Stream, dlq}, args...).Int64()
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
