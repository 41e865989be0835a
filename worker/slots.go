package worker

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/wire"
)

// On a Redis Cluster, one XREADGROUP may name only keys of one hash slot
// (else CROSSSLOT), and every partition stream has a slot of its own (its
// replay stream shares it). So the worker reads there with one XREADGROUP
// per slot group:
//
//   - a read that would not block (the rounds of fetchLoop) sends the same
//     streams with the same COUNT as on a single Redis, split by slot into
//     one XREADGROUP each, pipelined (go-redis sends each node its commands
//     in one round trip, the nodes in parallel). The streams are rotated as
//     on a single Redis, so which slot group goes first rotates too.
//   - the wait after a round that found nothing starts one blocking
//     XREADGROUP per slot group (none where one is still running), each in
//     its goroutine, and returns with the first that delivers. The others
//     keep waiting for up to BlockTimeout; what they deliver (leased at once,
//     like everything read) is collected before the next read. At most
//     maxBlocking of them run at a time, so they cannot take every
//     connection of the client's pool.
//
// On a single Redis all streams share "slot" 0 and nothing changes: one
// XREADGROUP per read, blocking ones included.

// slotReads are the blocking reads running on a Redis Cluster. inflight is
// touched by the fetch loop only; the reads report on results.
type slotReads struct {
	inflight map[int]bool // slot → a blocking read of that slot group is running
	results  chan slotResult
	wg       sync.WaitGroup
}

type slotResult struct {
	slot int
	msgs []*Message
	err  error
}

func newSlotReads(maxBlocking int) *slotReads {
	return &slotReads{inflight: map[int]bool{}, results: make(chan slotResult, max(maxBlocking, 1))}
}

// maxBlocking returns how many blocking reads may run at once on a cluster
// client: half of its per-node pool, so that acknowledgements, leases and
// the non-blocking reads always find a connection.
func maxBlocking(c *redis.ClusterClient) int {
	return max(c.Options().PoolSize/2, 1)
}

// slotGroups splits keys into groups of one hash slot each, in the order of
// each group's first key, keeping the keys' order within a group.
func slotGroups(keys []string) [][]string {
	idx := make(map[int]int, len(keys))
	var out [][]string
	for _, k := range keys {
		s := wire.Slot(k)
		i, ok := idx[s]
		if !ok {
			i = len(out)
			idx[s] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], k)
	}
	return out
}

// readNow reads without blocking: one XREADGROUP, or on a cluster one per
// slot group, pipelined.
func (w *Worker) readNow(ctx context.Context, keys []string, count int64) ([]*Message, error) {
	if !w.perSlot {
		return w.readGroup(ctx, keys, count, -1)
	}
	groups := slotGroups(keys)
	if len(groups) == 1 {
		return w.readGroup(ctx, keys, count, -1)
	}
	cmds := make([]*redis.XStreamSliceCmd, len(groups))
	_, _ = w.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, g := range groups {
			cmds[i] = p.XReadGroup(ctx, w.readArgs(g, count, -1))
		}
		return nil
	})
	var out []*Message
	var firstErr error
	for _, c := range cmds {
		res, err := c.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			firstErr = orErr(firstErr, err)
			continue
		}
		out = append(out, w.admitRead(ctx, res)...)
	}
	return w.someOrErr(out, firstErr)
}

// readBlocking waits up to block for entries of keys: one blocking
// XREADGROUP, or on a cluster one per slot group (see above).
func (w *Worker) readBlocking(ctx context.Context, keys []string, count int64, block time.Duration) ([]*Message, error) {
	if !w.perSlot {
		return w.readGroup(ctx, keys, count, block)
	}
	sr := w.slotReads
	for _, g := range slotGroups(keys) {
		if len(sr.inflight) >= cap(sr.results) {
			break
		}
		slot := wire.Slot(g[0])
		if sr.inflight[slot] {
			continue
		}
		sr.inflight[slot] = true
		sr.wg.Add(1)
		go func() {
			defer sr.wg.Done()
			msgs, err := w.readGroup(ctx, g, count, block)
			sr.results <- slotResult{slot, msgs, err} // never blocks: cap(results) >= reads running
		}()
	}
	t := time.NewTimer(block)
	defer t.Stop()
	select {
	case r := <-sr.results:
		delete(sr.inflight, r.slot)
		msgs, err := w.collectSlotReads()
		return w.someOrErr(append(r.msgs, msgs...), orErr(r.err, err))
	case <-t.C:
		return w.collectSlotReads()
	}
}

// collectSlotReads returns what the blocking reads that finished delivered,
// without waiting for the others.
func (w *Worker) collectSlotReads() ([]*Message, error) {
	if !w.perSlot {
		return nil, nil
	}
	var out []*Message
	var firstErr error
	for {
		select {
		case r := <-w.slotReads.results:
			delete(w.slotReads.inflight, r.slot)
			out = append(out, r.msgs...)
			firstErr = orErr(firstErr, r.err)
		default:
			return w.someOrErr(out, firstErr)
		}
	}
}

// stopSlotReads waits for the blocking reads still running (at most
// BlockTimeout) and returns what they delivered, to be handed back like the
// local queue at shutdown (unclaim).
func (w *Worker) stopSlotReads() []*Message {
	if !w.perSlot {
		return nil
	}
	w.slotReads.wg.Wait()
	msgs, _ := w.collectSlotReads()
	return msgs
}

// someOrErr returns the messages if there are any (logging err: some slot
// groups failed, the others delivered), else err.
func (w *Worker) someOrErr(msgs []*Message, err error) ([]*Message, error) {
	if len(msgs) == 0 {
		return nil, err
	}
	if err != nil {
		w.log.Warn("XREADGROUP failed on some slots", "err", err)
	}
	return msgs, nil
}

// orErr returns the first non-nil error of a and b.
func orErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
