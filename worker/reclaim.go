package worker

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/wire"
)

// reclaimLoop takes over the entries of dead workers every ReclaimInterval,
// in a goroutine of its own: the reads never delay it, however busy the
// worker is.
func (w *Worker) reclaimLoop(ctx context.Context) {
	t := time.NewTicker(w.cfg.ReclaimInterval)
	defer t.Stop()
	type sample struct {
		at       time.Time
		finished uint64
	}
	samples := []sample{{time.Now(), w.sched.finishedCount()}}
	rr := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		// Entries held here unstarted for a visibility timeout (queued,
		// or parked since their claim): this worker cannot start them;
		// hand them back to the group.
		if stale := w.sched.takeStale(now.Add(-w.cfg.VisibilityTimeout)); len(stale) > 0 {
			w.log.Warn("handing back entries held unstarted for longer than the visibility timeout (handlers hang, or are too slow)", "entries", len(stale))
			w.handBack(stale)
		}
		// Turnover of the last visibility timeout.
		finished := w.sched.finishedCount()
		samples = append(samples, sample{now, finished})
		for len(samples) > 2 && now.Sub(samples[1].at) >= w.cfg.VisibilityTimeout {
			samples = samples[1:]
		}
		// A round that leaves due entries in Redis (its budget ran out, or
		// was none: a read in flight, the queue full) is followed by
		// another as soon as the claimed ones are on their way
		// (reclaimBurstPause), not a reclaim interval later; while rounds
		// claim nothing the pause doubles, and the ticker takes over at
		// the next interval. 110 entries of a dead worker beside two
		// saturated 16-slot workers took 3 intervals at 16 a round. A
		// round that stops at the streams' claimRoom is not followed:
		// what it leaves is for the other workers, or for this one's next
		// tick once its queues drained.
		pause := reclaimBurstPause
		for {
			rr++
			more, claimed := w.reclaimRound(ctx, rr, int(finished-samples[0].finished))
			if !claimed {
				pause *= 2
			} else {
				pause = reclaimBurstPause
			}
			if !more || ctx.Err() != nil || time.Since(now)+pause >= w.cfg.ReclaimInterval {
				break
			}
			sleep(ctx, pause)
		}
	}
}

// reclaimBurstPause is the first pause between reclaim rounds while due
// entries are left: time for the urgent entries claimed to start (a slot
// frees every handler time / concurrency) so that the next round has room.
const reclaimBurstPause = 10 * time.Millisecond

// reclaimRound claims entries of other consumers idle for VisibilityTimeout
// (XAUTOCLAIM), as many as the scheduler has room for (reclaimBudget): that
// room goes Concurrency beyond the read-ahead, which new reads may not use,
// so a dead worker's entries are taken over even while every worker is
// saturated — they hold their partitions' commits. From each stream it
// claims no more than the stream starts here within half a visibility
// timeout (claimRoom); the rest stay due for the other workers. A stream
// queues no more than its part and share (what is beyond is parked: held
// and leased, started as its queue drains, see pushUrgent). They are
// queued before the entries read of their streams. First one pipelined XPENDING IDLE per stream finds
// the streams that have such entries, and where the first one is; then only
// those are claimed from, starting with a different stream every round so
// that the first ones cannot take the whole budget. Entries this consumer
// holds itself are left alone (see reclaimScript): their lease failed to be
// extended, they are not abandoned. It reports whether due entries may be
// left (the budget ran out, or was none) and whether it claimed any.
func (w *Worker) reclaimRound(ctx context.Context, rr, recent int) (more, claimedAny bool) {
	streams := w.sched.listed()
	if len(streams) == 0 {
		return false, false
	}
	slices.Sort(streams)
	streams = rotate(streams, rr%len(streams))
	first := w.idleEntries(ctx, streams)
	if len(first) == 0 {
		return false, false
	}
	budget := w.sched.reclaimBudget(recent) // reserved until pushUrgent
	claimed := 0
	// The scripts are not cut short by a shutdown: an entry claimed in
	// Redis but not seen here would wait a visibility timeout more.
	sctx := context.WithoutCancel(ctx)
	var ts []*task
	for _, s := range streams {
		start, ok := first[s]
		if !ok {
			continue
		}
		if budget <= 0 || ctx.Err() != nil {
			break
		}
		n := min(budget, w.sched.claimRoom(s))
		if n <= 0 {
			continue
		}
		args := append([]any{w.cfg.Group, w.cfg.Consumer, w.cfg.VisibilityTimeout.Milliseconds(), start, n}, w.heldIn(s)...)
		res, err := reclaimScript.Run(sctx, w.rdb, []string{s}, args...).Slice()
		if err != nil {
			if !isNoSuchKey(err) && !redis.HasErrorPrefix(err, "NOGROUP") {
				w.log.Warn("reclaim failed", "stream", s, "err", err)
			}
			continue
		}
		_, entries, counts, err := parseReclaim(res)
		if err != nil {
			w.log.Warn("reclaim: unexpected reply", "stream", s, "err", err)
			continue
		}
		for i, e := range entries {
			he := w.hold(s, e.ID)
			w.stats.reclaimed.Add(1)
			w.log.Debug("reclaimed entry", "stream", s, "id", e.ID, "deliveries", counts[i])
			if m := w.admit(sctx, he, e.Values, counts[i]); m != nil {
				ts = append(ts, &task{m: m, he: he, reclaimed: true})
			}
			budget--
			claimed++
		}
	}
	if len(ts) > 0 {
		w.log.Info("reclaimed entries of stopped workers", "entries", len(ts))
	}
	refused := w.sched.pushUrgent(ts)
	if len(refused) > 0 {
		w.handBack(refused)
	}
	return budget <= 0 && len(refused) == 0, claimed > 0
}

// idleEntries returns, for each stream with an entry pending for at least
// VisibilityTimeout, the ID of the first such entry: one XPENDING IDLE per
// stream, pipelined (on a cluster, go-redis sends each node its share).
func (w *Worker) idleEntries(ctx context.Context, streams []string) map[string]string {
	out := map[string]string{}
	const chunk = 500
	for i := 0; i < len(streams) && ctx.Err() == nil; i += chunk {
		part := streams[i:min(i+chunk, len(streams))]
		cmds := make([]*redis.XPendingExtCmd, len(part))
		_, _ = w.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j, s := range part {
				cmds[j] = p.XPendingExt(ctx, &redis.XPendingExtArgs{
					Stream: s, Group: w.cfg.Group, Idle: w.cfg.VisibilityTimeout, Start: "-", End: "+", Count: 1,
				})
			}
			return nil
		})
		for j, c := range cmds {
			ps, err := c.Result()
			switch {
			case err != nil && !errors.Is(err, redis.Nil) && !isNoSuchKey(err) && !redis.HasErrorPrefix(err, "NOGROUP"):
				w.log.Warn("reclaim: XPENDING failed", "stream", part[j], "err", err)
			case err == nil && len(ps) > 0:
				out[part[j]] = ps[0].ID
			}
		}
	}
	return out
}

// janitorInterval is how often the idle consumers are looked for.
const janitorInterval = time.Minute

// janitorBatch is how many streams one janitor pipeline looks at.
const janitorBatch = 200

// janitorLoop deletes, every janitorInterval, the group's consumers that
// have nothing pending and have been idle longer than ConsumerIdleTimeout
// (left over by workers that died), in a goroutine of its own.
func (w *Worker) janitorLoop(ctx context.Context) {
	if w.cfg.ConsumerIdleTimeout <= 0 {
		return
	}
	select { // the first round right after the first discovery
	case <-ctx.Done():
		return
	case <-w.discovered:
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.removeIdleConsumers(ctx, w.sched.listed())
		t.Reset(janitorInterval)
	}
}

// removeIdleConsumers deletes the group's consumers that have nothing
// pending and have been idle longer than ConsumerIdleTimeout: XINFO
// CONSUMERS pipelined over janitorBatch streams at a time, then the
// deletion, which checks again that nothing is pending, in a script.
func (w *Worker) removeIdleConsumers(ctx context.Context, streams []string) {
	for i := 0; i < len(streams) && ctx.Err() == nil; i += janitorBatch {
		part := streams[i:min(i+janitorBatch, len(streams))]
		cmds := make([]*redis.XInfoConsumersCmd, len(part))
		_, _ = w.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j, s := range part {
				cmds[j] = p.XInfoConsumers(ctx, s, w.cfg.Group)
			}
			return nil
		})
		for j, cmd := range cmds {
			cs, err := cmd.Result()
			if err != nil {
				continue
			}
			s := part[j]
			for _, c := range cs {
				if c.Name == w.cfg.Consumer || c.Pending > 0 || c.Idle < w.cfg.ConsumerIdleTimeout {
					continue
				}
				if n, err := delConsumerScript.Run(ctx, w.rdb, []string{s}, w.cfg.Group, c.Name).Int64(); err == nil && n >= 0 {
					w.log.Info("deleted idle consumer with nothing pending", "stream", s, "idle_consumer", c.Name, "idle", c.Idle)
				}
			}
		}
	}
}

// runsGCCount is the HSCAN COUNT of one runsGCScript call: about how many
// fields of one runs hash a cleanup round looks at.
const runsGCCount = 100

// runsGCLoop deletes, every RunsCleanupInterval, the runs recorded
// (start.lua) for entries no longer pending in the group, in a goroutine of
// its own (the reads never wait for it). This worker deletes the record of
// an entry it acknowledges or dead-letters itself; the cleanup takes the
// rest: entries acknowledged by another consumer (its lease lapsed while
// ours ran) or by a worker that decides on delivery counts, a retry given
// up at shutdown and finished elsewhere, deleted entries. A round looks at
// one HSCAN batch (runsGCCount) of each stream's hash, resuming the walk
// where the last round left it: bounded work per round, whatever the size
// of the hashes.
func (w *Worker) runsGCLoop(ctx context.Context) {
	if w.cfg.RunsCleanupInterval <= 0 {
		return
	}
	select {
	case <-ctx.Done():
		return
	case <-w.discovered:
	}
	t := time.NewTicker(w.cfg.RunsCleanupInterval)
	defer t.Stop()
	cursors := map[string]string{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.runsGCRound(ctx, w.sched.listed(), cursors)
	}
}

// runsGCRound runs runsGCScript once on each stream's runs hash, pipelined
// janitorBatch streams at a time, from the cursor the last round returned
// (cursors: stream → HSCAN cursor; absent: start over).
func (w *Worker) runsGCRound(ctx context.Context, streams []string, cursors map[string]string) {
	for s := range cursors {
		if !slices.Contains(streams, s) {
			delete(cursors, s)
		}
	}
	for i := 0; i < len(streams) && ctx.Err() == nil; i += janitorBatch {
		part := streams[i:min(i+janitorBatch, len(streams))]
		cmds := make([]*redis.Cmd, len(part))
		_, _ = w.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j, s := range part {
				cur := cursors[s]
				if cur == "" {
					cur = "0"
				}
				// Eval: Run cannot fall back from NOSCRIPT in a pipeline.
				cmds[j] = runsGCScript.Eval(ctx, p, []string{s, wire.RunsKey(s, w.cfg.Group)}, w.cfg.Group, cur, runsGCCount)
			}
			return nil
		})
		for j, c := range cmds {
			s := part[j]
			res, err := c.Slice()
			if err != nil || len(res) != 2 {
				if err != nil && ctx.Err() == nil {
					w.log.Warn("runs clean-up failed", "stream", s, "err", err)
				}
				delete(cursors, s)
				continue
			}
			if cur, _ := res[0].(string); cur != "" && cur != "0" {
				cursors[s] = cur
			} else {
				delete(cursors, s)
			}
			if n, _ := res[1].(int64); n > 0 {
				w.log.Debug("deleted the runs records of entries no longer pending", "stream", s, "fields", n)
			}
		}
	}
}
