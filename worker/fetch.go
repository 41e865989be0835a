package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/wire"
)

// fetchLoop reads and reclaims entries and starts their handlers until ctx is
// cancelled. It returns the streams it last read, for the consumer clean-up.
//
// At most Concurrency handlers run. Entries are read only for free handler
// slots: with k free slots and S streams, one XREADGROUP asks each stream for
// k/S entries when k >= S; otherwise it asks windows of k streams, in turn,
// for one entry each, and blocks on all streams only when a whole round found
// nothing. So every stream is served each round whatever the others hold.
// Entries that arrive beyond the free slots (a blocking read woken by several
// streams, or a reclaim) wait in a local queue, leased like the others, and
// are started before anything new is read; at shutdown they are handed
// back (unclaim).
func (w *Worker) fetchLoop(ctx, hctx context.Context) []string {
	var (
		streams                                 []string
		nextDiscovery, nextReclaim, nextJanitor time.Time
		queue                                   []*Message
		rr, rrReclaim                           int
		cursors                                 = map[string]string{}
		errDelay                                time.Duration
	)
	for ctx.Err() == nil {
		now := time.Now()
		if !now.Before(nextDiscovery) {
			if s, err := w.discover(ctx); err != nil {
				w.log.Warn("stream discovery failed", "err", err)
			} else {
				streams = s
				w.stats.streams.Store(int64(len(s)))
			}
			nextDiscovery = now.Add(w.cfg.DiscoveryInterval)
		}
		for len(queue) > 0 && w.acquire(ctx, time.Time{}) {
			w.start(ctx, hctx, queue[0])
			queue = queue[1:]
		}
		if ctx.Err() != nil {
			break
		}
		if len(streams) == 0 {
			sleep(ctx, time.Until(nextDiscovery))
			continue
		}
		if !now.Before(nextReclaim) {
			rrReclaim++
			queue = append(queue, w.reclaim(ctx, rotate(streams, rrReclaim%len(streams)), cursors)...)
			nextReclaim = now.Add(w.cfg.ReclaimInterval)
			if len(queue) > 0 {
				continue
			}
		}
		if w.cfg.ConsumerIdleTimeout > 0 && !now.Before(nextJanitor) {
			w.removeIdleConsumers(ctx, streams)
			nextJanitor = now.Add(time.Minute)
		}
		if wait := time.Until(time.Unix(0, w.pauseUntil.Load())); wait > 0 {
			sleep(ctx, max(min(wait, time.Until(nextReclaim)), time.Millisecond))
			continue
		}
		deadline := nextReclaim
		if nextDiscovery.Before(deadline) {
			deadline = nextDiscovery
		}
		if !w.acquire(ctx, deadline) {
			continue
		}
		k := 1
		for k < w.cfg.Concurrency && w.tryAcquire() {
			k++
		}
		msgs, err := w.read(ctx, streams, k, &rr, time.Until(deadline))
		if err != nil {
			for range k {
				<-w.slots
			}
			if redis.HasErrorPrefix(err, "NOGROUP") {
				nextDiscovery = time.Time{} // a stream went away or lost its group
			}
			errDelay = min(max(2*errDelay, 50*time.Millisecond), 2*time.Second)
			w.log.Warn("XREADGROUP failed", "err", err, "retry_in", errDelay)
			sleep(ctx, errDelay)
			continue
		}
		errDelay = 0
		for i, m := range msgs {
			if i < k {
				w.start(ctx, hctx, m)
			} else {
				queue = append(queue, m)
			}
		}
		for range k - min(k, len(msgs)) {
			<-w.slots
		}
	}
	// What was read or reclaimed but not started goes back at once, rather
	// than staying leased by a worker that will not run it.
	w.unclaim(append(queue, w.stopSlotReads()...))
	return streams
}

// unclaim hands entries this consumer holds but has not started back to
// the group: each stays pending under this consumer, but with an idle time
// of VisibilityTimeout, so that any worker's next XAUTOCLAIM takes it, and
// with the delivery that was never run taken off its count.
func (w *Worker) unclaim(msgs []*Message) {
	if len(msgs) == 0 {
		return
	}
	byStream := map[string][]any{}
	for _, m := range msgs {
		byStream[m.Stream] = append(byStream[m.Stream], m.ID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for stream, ids := range byStream {
		args := append([]any{w.cfg.Group, w.cfg.Consumer, w.cfg.VisibilityTimeout.Milliseconds()}, ids...)
		if err := unclaimScript.Run(ctx, w.rdb, []string{stream}, args...).Err(); err != nil {
			w.log.Warn("cannot hand back entries not started; they are reclaimed after the visibility timeout",
				"stream", stream, "entries", len(ids), "err", err)
		} else {
			w.log.Info("handed back entries not started", "stream", stream, "entries", len(ids))
		}
		for _, id := range ids {
			w.release(stream, id.(string))
		}
	}
}

// acquire takes a handler slot, waiting until one is free, ctx is done
// (false) or deadline passes (false; zero: no deadline).
func (w *Worker) acquire(ctx context.Context, deadline time.Time) bool {
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(max(time.Until(deadline), 0))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case w.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	case <-timeout:
		return false
	}
}

func (w *Worker) tryAcquire() bool {
	select {
	case w.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// read returns new entries for k free slots (possibly more, see fetchLoop),
// as messages ready to start. Malformed entries and replayed entries meant
// for another group are dealt with here and not returned. On a Redis Cluster
// each XREADGROUP below is one per hash slot (slots.go).
func (w *Worker) read(ctx context.Context, streams []string, k int, rr *int, block time.Duration) ([]*Message, error) {
	// The read is not cancelled with ctx: entries Redis delivers are
	// pending under this consumer, and a read cut short would leave them
	// unseen until reclaimed. BlockTimeout bounds the wait instead.
	rctx := context.WithoutCancel(ctx)
	block = max(min(block, w.cfg.BlockTimeout), time.Millisecond)
	if msgs, err := w.collectSlotReads(); err != nil || len(msgs) > 0 {
		return msgs, err // delivered by blocking reads of earlier rounds
	}
	s := len(streams)
	if k >= s {
		*rr++
		order := rotate(streams, *rr%s)
		if w.perSlot {
			if msgs, err := w.readNow(rctx, order, int64(k/s)); err != nil || len(msgs) > 0 {
				return msgs, err
			}
		}
		return w.readBlocking(rctx, order, int64(k/s), block)
	}
	for tried := 0; tried < s; tried += k {
		window := make([]string, 0, k)
		for i := range k {
			window = append(window, streams[(*rr+i)%s])
		}
		*rr = (*rr + k) % s
		msgs, err := w.readNow(rctx, window, 1)
		if err != nil || len(msgs) > 0 {
			return msgs, err
		}
	}
	return w.readBlocking(rctx, rotate(streams, *rr), 1, block)
}

// readGroup runs one XREADGROUP (block < 0: no BLOCK).
func (w *Worker) readGroup(ctx context.Context, keys []string, count int64, block time.Duration) ([]*Message, error) {
	res, err := w.rdb.XReadGroup(ctx, w.readArgs(keys, count, block)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return w.admitRead(ctx, res), nil
}

func (w *Worker) readArgs(keys []string, count int64, block time.Duration) *redis.XReadGroupArgs {
	args := &redis.XReadGroupArgs{
		Group:    w.cfg.Group,
		Consumer: w.cfg.Consumer,
		Streams:  make([]string, 0, 2*len(keys)),
		Count:    count,
		Block:    block,
	}
	args.Streams = append(args.Streams, keys...)
	for range keys {
		args.Streams = append(args.Streams, ">")
	}
	return args
}

// admitRead leases what an XREADGROUP delivered and admits it.
func (w *Worker) admitRead(ctx context.Context, res []redis.XStream) []*Message {
	var out []*Message
	for _, st := range res {
		for _, xm := range st.Messages {
			w.hold(st.Stream, xm.ID)
			if m := w.admit(ctx, st.Stream, xm.ID, xm.Values, 1); m != nil {
				out = append(out, m)
			}
		}
	}
	return out
}

// admit turns a delivered entry into a message to handle, or deals with it
// at once and returns nil: a malformed entry is dead-lettered; a replayed
// entry dead-lettered by another group is acknowledged (it is not ours).
func (w *Worker) admit(ctx context.Context, stream, id string, values map[string]any, deliveries int64) *Message {
	m, err := newMessage(stream, id, values, deliveries)
	if err != nil {
		w.log.Warn("malformed entry: dead-lettering it", "stream", stream, "id", id, "err", err)
		w.deadLetter(ctx, m, wire.ReasonMalformed, err)
		return nil
	}
	if m.Replayed {
		if info, ok := wire.DecodeDLQInfo(values); ok && info.Group != "" && info.Group != w.cfg.Group {
			w.acks.add(stream, id)
			return nil
		}
	}
	return m
}

func rotate(s []string, by int) []string {
	by %= len(s)
	return append(slices.Clone(s[by:]), s[:by]...)
}

// discover returns the streams to read, sorted: the registry's partition
// streams (of Config.Topics, if set) and their replay streams, each only if
// this worker's group exists on it.
func (w *Worker) discover(ctx context.Context) ([]string, error) {
	members, err := w.rdb.SMembers(ctx, wire.RegistryKey(w.cfg.Prefix)).Result()
	if err != nil {
		return nil, fmt.Errorf("read registry %s: %w", wire.RegistryKey(w.cfg.Prefix), err)
	}
	var cands []string
	for _, s := range members {
		_, topic, _, err := wire.ParseStreamKey(s)
		if err != nil {
			w.log.Warn("registry holds a key that is not a partition stream", "stream", s)
			continue
		}
		if len(w.cfg.Topics) > 0 && !slices.Contains(w.cfg.Topics, topic) {
			continue
		}
		cands = append(cands, s, wire.ReplayKey(s))
	}
	cmds := make([]*redis.XInfoGroupsCmd, len(cands))
	_, _ = w.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, s := range cands {
			cmds[i] = p.XInfoGroups(ctx, s)
		}
		return nil
	})
	var out []string
	for i, s := range cands {
		groups, err := cmds[i].Result()
		if err != nil && !isNoSuchKey(err) {
			return nil, fmt.Errorf("XINFO GROUPS %s: %w", s, err)
		}
		if slices.ContainsFunc(groups, func(g redis.XInfoGroup) bool { return g.Name == w.cfg.Group }) {
			out = append(out, s)
		} else if !wire.IsReplayKey(s) && err == nil {
			w.log.Debug("group not on stream (yet); is it one of the ingest's --worker-groups?", "stream", s)
		}
	}
	slices.Sort(out)
	return out, nil
}

func isNoSuchKey(err error) bool {
	return err != nil && strings.Contains(strings.ToLower(err.Error()), "no such key")
}

// reclaim claims entries of other consumers idle for VisibilityTimeout
// (XAUTOCLAIM), at most as many per round as there are free handler slots
// (none when all are busy: what this worker could not start at once would
// stay leased by it, out of reach of idle workers), continuing each stream's
// scan where the last round stopped. The caller rotates streams, so that the
// first ones cannot take the whole budget every round. Entries this consumer holds itself are left
// alone (see reclaimScript): their lease failed to be extended, they are not
// abandoned.
func (w *Worker) reclaim(ctx context.Context, streams []string, cursors map[string]string) []*Message {
	budget := cap(w.slots) - len(w.slots)
	var out []*Message
	for _, s := range streams {
		if budget <= 0 || ctx.Err() != nil {
			break
		}
		cur := cursors[s]
		if cur == "" {
			cur = "0-0"
		}
		args := append([]any{w.cfg.Group, w.cfg.Consumer, w.cfg.VisibilityTimeout.Milliseconds(), cur, budget}, w.heldIn(s)...)
		res, err := reclaimScript.Run(ctx, w.rdb, []string{s}, args...).Slice()
		if err != nil {
			if !isNoSuchKey(err) && !redis.HasErrorPrefix(err, "NOGROUP") {
				w.log.Warn("reclaim failed", "stream", s, "err", err)
			}
			continue
		}
		next, entries, counts, err := parseReclaim(res)
		if err != nil {
			w.log.Warn("reclaim: unexpected reply", "stream", s, "err", err)
			continue
		}
		cursors[s] = next
		for i, e := range entries {
			w.hold(s, e.ID)
			w.stats.reclaimed.Add(1)
			w.log.Debug("reclaimed entry", "stream", s, "id", e.ID, "deliveries", counts[i])
			if m := w.admit(ctx, s, e.ID, e.Values, counts[i]); m != nil {
				out = append(out, m)
			}
			budget--
		}
	}
	return out
}

func parseReclaim(res []any) (next string, entries []redis.XMessage, counts []int64, err error) {
	if len(res) != 3 {
		return "", nil, nil, fmt.Errorf("want 3 elements, got %d", len(res))
	}
	next, _ = res[0].(string)
	raw, _ := res[1].([]any)
	cs, _ := res[2].([]any)
	if len(raw) != len(cs) {
		return "", nil, nil, fmt.Errorf("%d entries but %d counts", len(raw), len(cs))
	}
	for i, r := range raw {
		e, ok := r.([]any)
		if !ok || len(e) != 2 {
			return "", nil, nil, fmt.Errorf("entry %d: %T", i, r)
		}
		id, _ := e[0].(string)
		kv, _ := e[1].([]any)
		vals := make(map[string]any, len(kv)/2)
		for j := 0; j+1 < len(kv); j += 2 {
			k, _ := kv[j].(string)
			vals[k] = kv[j+1]
		}
		n, _ := cs[i].(int64)
		entries = append(entries, redis.XMessage{ID: id, Values: vals})
		counts = append(counts, n)
	}
	return next, entries, counts, nil
}

// removeIdleConsumers deletes the group's consumers that have nothing
// pending and have been idle longer than ConsumerIdleTimeout.
func (w *Worker) removeIdleConsumers(ctx context.Context, streams []string) {
	for _, s := range streams {
		cs, err := w.rdb.XInfoConsumers(ctx, s, w.cfg.Group).Result()
		if err != nil {
			continue
		}
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

// cleanupSelf deletes this consumer from every stream where it has nothing
// pending. Where it still has entries, it stays: they are reclaimed later.
func (w *Worker) cleanupSelf(streams []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range streams {
		n, err := delConsumerScript.Run(ctx, w.rdb, []string{s}, w.cfg.Group, w.cfg.Consumer).Int64()
		switch {
		case err != nil:
			w.log.Debug("consumer clean-up failed", "stream", s, "err", err)
		case n < 0:
			w.log.Info("consumer keeps pending entries; other workers will reclaim them", "stream", s)
		}
	}
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
