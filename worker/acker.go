package worker

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/wire"
)

// acker batches acknowledgements: it sends them every AckInterval, or at once
// when AckBatch are waiting, one XACK per stream in one pipeline. Acks that
// fail stay queued and go with the next flush (unless the error is
// permanent: permanentAckError); the entries are still pending
// in Redis meanwhile, so a crash costs duplicates, never records.
type acker struct {
	w       *Worker
	mu      sync.Mutex
	pending map[string][]*heldEntry // stream → the holds of the entries to acknowledge
	n       int
	closed  bool
	kick    chan struct{}
}

func newAcker(w *Worker) *acker {
	return &acker{w: w, pending: map[string][]*heldEntry{}, kick: make(chan struct{}, 1)}
}

// add queues the acknowledgement of a held entry. After close it is
// dropped: the entry stays pending and will be reclaimed.
func (a *acker) add(he *heldEntry) {
	a.w.settling(he)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	a.pending[he.ref.stream] = append(a.pending[he.ref.stream], he)
	a.n++
	if a.n >= a.w.cfg.AckBatch {
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
}

// run flushes until stop is closed, then flushes what is left (retrying for
// up to a few seconds) and closes.
func (a *acker) run(stop <-chan struct{}) {
	t := time.NewTicker(a.w.cfg.AckInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-a.kick:
		case <-stop:
			deadline := time.Now().Add(5 * time.Second)
			for a.flush(context.Background()) != nil && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
			}
			a.mu.Lock()
			a.closed = true
			a.mu.Unlock()
			return
		}
		_ = a.flush(context.Background())
	}
}

// permanentAckError reports whether an XACK error will not go away by
// retrying: WRONGTYPE (the key is not a stream), NOGROUP (some servers and
// emulators; redis-server answers 0 for a missing group).
func permanentAckError(err error) bool {
	return redis.HasErrorPrefix(err, "NOGROUP") || redis.HasErrorPrefix(err, "WRONGTYPE")
}

func (a *acker) flush(ctx context.Context) error {
	a.mu.Lock()
	batch := a.pending
	if a.n == 0 {
		a.mu.Unlock()
		return nil
	}
	a.pending, a.n = map[string][]*heldEntry{}, 0
	a.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmds := map[string]*redis.IntCmd{}
	_, err := a.w.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for stream, hes := range batch {
			ids := make([]string, len(hes))
			for i, he := range hes {
				ids[i] = he.ref.id
			}
			cmds[stream] = p.XAck(ctx, stream, a.w.cfg.Group, ids...)
			// The runs recorded for the entries (start.lua) are done with.
			// Only entries that went through start.lua or were delivered
			// more than once can have a record: the common case (delivered
			// once, run once) costs no HDEL. Best effort: a field left
			// behind is bounded by the entry's delivery count when its ID
			// is used again (start.lua).
			var recorded []string
			for _, he := range hes {
				if he.mayHaveRuns {
					recorded = append(recorded, he.ref.id)
				}
			}
			if len(recorded) > 0 {
				p.HDel(ctx, wire.RunsKey(stream, a.w.cfg.Group), recorded...)
			}
		}
		return nil
	})
	var failed error
	for stream, hes := range batch {
		if cerr := cmds[stream].Err(); permanentAckError(cerr) {
			// Retrying cannot help (the key is no stream any more, or the
			// group is gone): stop holding the entries, drop the acks.
			a.w.log.Error("XACK failed for good; dropping the acknowledgements", "stream", stream, "group", a.w.cfg.Group, "entries", len(hes), "err", cerr)
			for _, he := range hes {
				a.w.release(he)
			}
			continue
		} else if cerr != nil {
			failed = cerr
			a.w.log.Warn("XACK failed; will retry", "stream", stream, "group", a.w.cfg.Group, "entries", len(hes), "err", cerr)
			a.mu.Lock()
			a.pending[stream] = append(a.pending[stream], hes...)
			a.n += len(hes)
			a.mu.Unlock()
			continue
		}
		a.w.stats.acked.Add(int64(len(hes)))
		for _, he := range hes {
			a.w.release(he)
		}
	}
	if failed == nil {
		failed = err
	}
	return failed
}
