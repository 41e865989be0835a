package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Worker is one consumer of a worker group. Create it with New and start it
// with Run. Its methods are safe for concurrent use.
type Worker struct {
	cfg Config
	rdb redis.UniversalClient
	log *slog.Logger

	started atomic.Bool
	stats   counters

	sched    *scheduler     // which entry runs in which handler slot (sched.go)
	handlers sync.WaitGroup // slot goroutines
	acks     *acker

	mu   sync.Mutex
	held map[entryRef]*heldEntry // entries this consumer holds: leased until acknowledged

	discovered     chan struct{} // closed by the first discovery
	discoveredOnce sync.Once

	stopRun context.CancelCauseFunc // ends Run's reading side (a wire version change); set by Run before the loops start

	perSlot   bool       // Redis Cluster: one XREADGROUP per hash slot (slots.go)
	slotReads *slotReads // the blocking reads running, when perSlot
}

// cancelGrace is how long Run waits, after cancelling the handlers at the
// end of ShutdownTimeout, for them to return before the last acks are sent.
const cancelGrace = time.Second

type entryRef struct{ stream, id string }

// heldEntry is this consumer's hold of one entry, from the read or reclaim
// that made the entry pending under it to its acknowledgement (or until it
// is lost, dead-lettered or handed back). The tasks of the entry carry it:
// an entry held, lost (another consumer took it) and held again is a new
// heldEntry, and only the tasks that carry the current one may run or hand
// back the entry (Worker.owns). A task left over from the first hold (one
// waiting for a retry when the lease was lost) then finds itself stale and
// drops out, instead of running the entry a second time beside the task of
// the new hold.
type heldEntry struct {
	ref   entryRef
	since time.Time
	// settling: this consumer queued the entry's acknowledgement or is
	// dead-lettering it, so the entry may leave the PEL at any moment by
	// our own doing; a lease extension that then finds it gone has not
	// lost it. Guarded by Worker.mu.
	settling bool
	// mayHaveRuns: the entry may have a runs record (<stream>:runs): it
	// was delivered more than once, or this consumer ran start.lua on it.
	// Only then do the acknowledgement and the dead letter delete the
	// record; an entry delivered once started without start.lua (its first
	// run is implied by its delivery count 1). Set by the goroutine that
	// holds the task, before the entry is queued for acknowledgement or
	// dead-lettered.
	mayHaveRuns bool
}

// New checks cfg and returns a Worker.
func New(cfg Config) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	w := &Worker{
		cfg:        cfg,
		rdb:        cfg.Redis,
		log:        cfg.Logger.With("group", cfg.Group, "consumer", cfg.Consumer),
		held:       map[entryRef]*heldEntry{},
		discovered: make(chan struct{}),
	}
	w.sched = newScheduler(cfg.Concurrency, cfg.ReadAhead, nil)
	// Half the time after which a queued entry is handed back as stale
	// (takeStale): one that waited this long starts next.
	w.sched.maxAge = cfg.VisibilityTimeout / 2
	w.sched.claimEvery = cfg.ReclaimInterval
	w.acks = newAcker(w)
	if c, ok := cfg.Redis.(*redis.ClusterClient); ok {
		w.perSlot, w.slotReads = true, newSlotReads(maxBlocking(c))
	}
	return w, nil
}

// Consumer returns the worker's consumer name.
func (w *Worker) Consumer() string { return w.cfg.Consumer }

// Run processes messages until ctx is cancelled, then shuts down in this
// order: stop reading and reclaiming (at most BlockTimeout later); hand back
// the entries read ahead but not started (reclaimable at once: moved to
// the consumer "handed-back", out of reach of this worker's leases) and let go
// those waiting for a retry; wait for the running handlers up to
// ShutdownTimeout, still extending their leases, so that what is in flight
// finishes rather than being handed to another worker; then cancel the
// handlers' context and wait for them a second more; send the last
// acknowledgements; stop extending leases; delete this consumer from every
// stream where it has nothing pending (what it still holds is reclaimed by
// the others after VisibilityTimeout). Acks go before the lease stops so
// that no finished entry is ever reclaimed.
//
// Before it reads anything, Run checks that Redis accepts the worker's
// credentials and lets it run every command it needs, and that the wire
// contract version under the prefix is its own (startup.go). A refusal
// returns an *AuthError, another version an error wrapping ErrWireVersion,
// at once and having read nothing; a Redis that cannot be reached is
// retried with backoff (logged) until ctx ends. The version is checked
// again at each discovery: when it changes (a newer ingest), Run stops
// taking entries and shuts down in the order above, as if ctx had been
// cancelled, then returns an error wrapping ErrWireVersion.
//
// Run returns nil after a clean shutdown, an error wrapping
// ErrShutdownTimeout if handlers were still running, and ErrRunning if
// called twice. Once started it keeps going through Redis errors (logging
// them), as workers must survive a Redis restart.
func (w *Worker) Run(ctx context.Context) error {
	if !w.started.CompareAndSwap(false, true) {
		return ErrRunning
	}
	if err := w.startup(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		w.log.Error("worker cannot start", "err", err)
		return err
	}
	w.log.Info("worker starting", "prefix", w.cfg.Prefix, "concurrency", w.cfg.Concurrency,
		"read_ahead", w.cfg.ReadAhead, "visibility_timeout", w.cfg.VisibilityTimeout, "max_deliveries", w.cfg.MaxDeliveries)
	// A discovery that finds another wire version stops the reading side
	// the way the caller's cancellation does (the cause says why).
	parent := ctx
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	w.stopRun = stop

	// Handlers, acks and leases outlive ctx: they are stopped in the
	// shutdown order above, not by the caller's cancellation.
	hctx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	w.sched.mu.Lock()
	w.sched.start = func(t *task) {
		w.handlers.Add(1)
		go w.slot(hctx, t)
	}
	w.sched.mu.Unlock()
	ackStop, leaseStop := make(chan struct{}), make(chan struct{})
	ackDone, leaseDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(ackDone); w.acks.run(ackStop) }()
	go func() { defer close(leaseDone); w.leaseLoop(leaseStop) }()

	// Reading, reclaiming, discovery and the consumer clean-up each run on
	// their own, so that none of them waits for another. The reader has
	// nothing to read until the first discovery.
	kick := make(chan struct{}, 1)
	rediscover := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	var bg sync.WaitGroup
	bg.Go(func() { w.discoveryLoop(ctx, kick) })
	bg.Go(func() { w.reclaimLoop(ctx) })
	bg.Go(func() { w.janitorLoop(ctx) })
	bg.Go(func() { w.runsGCLoop(ctx) })
	w.readLoop(ctx, rediscover)
	bg.Wait()

	// What was read or reclaimed but not started goes back at once, rather
	// than staying leased by a worker that will not run it.
	queued, waiting := w.sched.stop()
	for _, m := range w.stopSlotReads() {
		queued = append(queued, &task{m: m, he: m.held})
	}
	w.handBack(append(queued, waiting...))

	var err error
	done := make(chan struct{})
	go func() { w.handlers.Wait(); close(done) }()
	timer := time.NewTimer(w.cfg.ShutdownTimeout)
	select {
	case <-done:
		timer.Stop()
	case <-timer.C:
		_, _, n, _ := w.sched.counts()
		cancelHandlers()
		err = fmt.Errorf("%w: %d handlers did not finish in %v; their entries stay pending and will be reclaimed",
			ErrShutdownTimeout, n, w.cfg.ShutdownTimeout)
		w.log.Warn("shutdown timeout", "running", n)
		// Handlers that return at the cancellation (those that heed ctx)
		// get a moment to do so, so that the acks of those that finished
		// are still sent; a handler that ignores ctx is not waited for.
		grace := time.NewTimer(cancelGrace)
		select {
		case <-done:
		case <-grace.C:
		}
		grace.Stop()
	}
	close(ackStop)
	<-ackDone
	close(leaseStop)
	<-leaseDone
	w.cleanupSelf(w.sched.listed())
	w.log.Info("worker stopped", "processed", w.stats.processed.Load())
	if cause := context.Cause(ctx); parent.Err() == nil && errors.Is(cause, ErrWireVersion) {
		return errors.Join(cause, err)
	}
	return err
}

// hold records that this consumer holds an entry (its lease is extended
// until release) and returns the hold, for the entry's tasks to carry.
func (w *Worker) hold(stream, id string) *heldEntry {
	he, _ := w.holdUnless(stream, id, false)
	return he
}

// holdRead is hold for an entry that an XREADGROUP delivered. It returns
// nil when this consumer already holds the entry and is not settling it:
// the group's delivery position went back (XGROUP SETID, Redis restored
// from an older snapshot) while the entry's handler runs or waits. That run
// goes on and keeps the lease; a second one would handle the entry twice at
// once (docs/reliability.md, finding 3).
func (w *Worker) holdRead(stream, id string) *heldEntry {
	he, ok := w.holdUnless(stream, id, true)
	if !ok {
		w.log.Warn("entry delivered again while this worker holds it (the group's position went back: XGROUP SETID, or Redis restored from an older snapshot): not run twice", "stream", stream, "id", id)
		return nil
	}
	return he
}

// holdUnless records a hold of the entry, unless unlessHeld and this
// consumer holds it already (not settling): then it returns false.
func (w *Worker) holdUnless(stream, id string, unlessHeld bool) (*heldEntry, bool) {
	he := &heldEntry{ref: entryRef{stream, id}, since: time.Now()}
	w.mu.Lock()
	if old := w.held[he.ref]; unlessHeld && old != nil && !old.settling {
		w.mu.Unlock()
		return nil, false
	}
	if old := w.held[he.ref]; old != nil && old.settling {
		// The entry is held again (read again after Redis forgot it)
		// while the acknowledgement of the older hold may still be on its
		// way: it would take this delivery out of the PEL too.
		he.settling = true
	}
	w.held[he.ref] = he
	w.mu.Unlock()
	return he, true
}

// release stops extending the lease of he's entry (acknowledged,
// dead-lettered, lost, or left to be reclaimed) if he is still the current
// hold of it: a stale hold releases nothing.
func (w *Worker) release(he *heldEntry) {
	if he == nil {
		return
	}
	w.mu.Lock()
	if w.held[he.ref] == he {
		delete(w.held, he.ref)
	}
	w.mu.Unlock()
}

// settling marks a held entry as about to be acknowledged (or
// dead-lettered, which acknowledges it) by this consumer, whichever of its
// holds does it. Call it before the XACK can reach Redis.
func (w *Worker) settling(he *heldEntry) {
	if he == nil {
		return
	}
	w.mu.Lock()
	// The XACK takes the entry out of the PEL whichever hold sends it: a
	// newer hold of the same entry (read again after Redis forgot it, say)
	// is settling too.
	if cur := w.held[he.ref]; cur != nil {
		cur.settling = true
	}
	w.mu.Unlock()
}

// owns reports whether he is the current hold of its entry: it was not
// released (after its lease was lost, say), nor replaced by a later hold of
// the same entry.
func (w *Worker) owns(he *heldEntry) bool {
	if he == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.held[he.ref] == he
}

// heldIn returns the IDs this consumer holds in stream.
func (w *Worker) heldIn(stream string) []any {
	w.mu.Lock()
	defer w.mu.Unlock()
	var ids []any
	for ref := range w.held {
		if ref.stream == stream {
			ids = append(ids, ref.id)
		}
	}
	return ids
}

// leaseLoop extends the lease of every held entry every VisibilityTimeout/3.
func (w *Worker) leaseLoop(stop <-chan struct{}) {
	t := time.NewTicker(w.cfg.VisibilityTimeout / 3)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		w.extendLeases()
	}
}

func (w *Worker) extendLeases() {
	byStream := map[string][]any{}
	// The holds the round extends: a lost ID releases only the hold it
	// was sent for. Released meanwhile (handed back) and claimed back by
	// this worker, the entry has a newer hold that the reply says nothing
	// about; dropping it made the new task stale and the entry wait a
	// visibility timeout more.
	w.mu.Lock()
	snap := make(map[entryRef]*heldEntry, len(w.held))
	for ref, he := range w.held {
		byStream[ref.stream] = append(byStream[ref.stream], ref.id)
		snap[ref] = he
	}
	w.mu.Unlock()
	if len(byStream) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.VisibilityTimeout/3)
	defer cancel()
	cmds := map[string]*redis.Cmd{}
	_, _ = w.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for stream, ids := range byStream {
			args := append([]any{w.cfg.Group, w.cfg.Consumer}, ids...)
			cmds[stream] = leaseScript.Eval(ctx, p, []string{stream}, args...) // Run cannot fall back from NOSCRIPT in a pipeline
		}
		return nil
	})
	gone := map[string][]string{} // stream → held IDs no longer pending under this consumer
	for stream, cmd := range cmds {
		lost, err := cmd.StringSlice()
		if err != nil {
			w.log.Warn("lease extension failed", "stream", stream, "err", err)
			continue
		}
		for _, id := range lost {
			// The entry is no longer pending under this consumer. If we
			// acknowledged it (or dead-lettered it) since the snapshot
			// above, that is why: nothing was lost. Otherwise it is not
			// ours any more: stop extending it. The handler goes on; its
			// ack, if any, is harmless.
			ref := entryRef{stream, id}
			w.mu.Lock()
			he := w.held[ref]
			taken := he != nil && he == snap[ref] && !he.settling
			if taken {
				delete(w.held, ref)
			}
			w.mu.Unlock()
			if taken {
				gone[stream] = append(gone[stream], id)
			}
		}
	}
	if len(gone) > 0 {
		w.classifyLost(ctx, gone)
	}
}

// classifyLost says why held entries are no longer pending under this
// consumer. Another worker took them (our lease lapsed, e.g. Redis was
// unreachable): they are pending under another consumer, or were delivered
// before the group's last-delivered-id and are not pending any more (taken
// and acknowledged already) while still in the stream; each may run twice:
// LeaseLost. Otherwise Redis forgot them (it restarted from an older
// snapshot, or empty; the entry will be delivered again) or they were
// deleted from the stream (XRANGE id id is empty; Redis 7's XCLAIM in
// lease.lua drops a deleted entry from the pending list): LeaseVanished,
// nobody took them. (An entry another consumer took, acknowledged, and the
// ingest trimmed before this check counts as Vanished too: rare, the trim
// follows the Kafka commit.)
func (w *Worker) classifyLost(ctx context.Context, gone map[string][]string) {
	pend := map[string][]*redis.XPendingExtCmd{}
	exists := map[string][]*redis.XMessageSliceCmd{}
	groups := map[string]*redis.XInfoGroupsCmd{}
	_, _ = w.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for stream, ids := range gone {
			for _, id := range ids {
				pend[stream] = append(pend[stream], p.XPendingExt(ctx, &redis.XPendingExtArgs{
					Stream: stream, Group: w.cfg.Group, Start: id, End: id, Count: 1,
				}))
				exists[stream] = append(exists[stream], p.XRange(ctx, stream, id, id))
			}
			groups[stream] = p.XInfoGroups(ctx, stream)
		}
		return nil
	})
	for stream, ids := range gone {
		last := ""
		if gs, err := groups[stream].Result(); err == nil {
			for _, g := range gs {
				if g.Name == w.cfg.Group {
					last = g.LastDeliveredID
				}
			}
		}
		for i, id := range ids {
			ps, err := pend[stream][i].Result()
			xs, xerr := exists[stream][i].Result()
			deleted := xerr == nil && len(xs) == 0 // no longer in the stream (XDEL, trimmed)
			switch {
			case err == nil && len(ps) == 1 && ps[0].Consumer != w.cfg.Consumer:
				w.stats.leaseLost.Add(1)
				w.log.Warn("lease lost: entry reclaimed by another consumer", "stream", stream, "id", id, "consumer", ps[0].Consumer)
			case err == nil && len(ps) == 0 && !deleted && last != "" && compareIDs(id, last) <= 0:
				w.stats.leaseLost.Add(1)
				w.log.Warn("lease lost: entry reclaimed and acknowledged by another consumer", "stream", stream, "id", id)
			default:
				w.stats.leaseVanished.Add(1)
				w.log.Warn("held entry no longer pending: Redis forgot it (a restart) or it was deleted; not run twice", "stream", stream, "id", id, "err", err)
			}
		}
	}
}

// Stats is a snapshot of a Worker's counters.
type Stats struct {
	Processed    int64 // handler calls that succeeded
	Failed       int64 // handler calls that failed (errors and panics)
	Retries      int64 // retries after a failure (each counts a delivery)
	Backoffs     int64 // RetryAfter back-offs (no delivery counted)
	DeadLettered int64 // entries written to a dead-letter stream
	Reclaimed    int64 // entries claimed from other consumers
	Acked        int64 // entries acknowledged
	LeaseLost    int64 // held entries another consumer took (each may run twice)
	Vanished     int64 // held entries no longer pending anywhere that nobody took: Redis forgot them (a restart) or they were deleted
	InFlight     int64 // handlers running now
	Queued       int64 // entries read ahead or reclaimed, waiting for a handler slot
	Waiting      int64 // entries waiting for a retry (their slot given back)
	Parked       int64 // of Queued, reclaimed entries beyond their stream's part and share: started as its queue drains, outside the read-ahead bound (when claimed, at most what the stream starts in half a visibility timeout at its share; handed back if not started a visibility timeout after the claim)
	Held         int64 // entries held now: running, queued, waiting, or awaiting their ack
	Streams      int64 // streams read at the last discovery
}

type counters struct {
	processed, failed, retries, backoffs, deadLettered, reclaimed, acked, leaseLost, leaseVanished, streams atomic.Int64
}

// Stats returns a snapshot of the worker's counters.
func (w *Worker) Stats() Stats {
	w.mu.Lock()
	held := int64(len(w.held))
	w.mu.Unlock()
	queued, waiting, running, parked := w.sched.counts()
	return Stats{
		Processed:    w.stats.processed.Load(),
		Failed:       w.stats.failed.Load(),
		Retries:      w.stats.retries.Load(),
		Backoffs:     w.stats.backoffs.Load(),
		DeadLettered: w.stats.deadLettered.Load(),
		Reclaimed:    w.stats.reclaimed.Load(),
		Acked:        w.stats.acked.Load(),
		LeaseLost:    w.stats.leaseLost.Load(),
		Vanished:     w.stats.leaseVanished.Load(),
		InFlight:     int64(running),
		Queued:       int64(queued),
		Waiting:      int64(waiting),
		Parked:       int64(parked),
		Held:         held,
		Streams:      w.stats.streams.Load(),
	}
}
