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

// probeInterval is how often, at most, the reader probes the streams whose
// last read found nothing while others keep it busy (when it is idle, a
// blocking read covers them all).
const probeInterval = 100 * time.Millisecond

// probeChunk is the most keys one probe names.
const probeChunk = 1000

// probeCalls bounds the XREADGROUPs one probe script runs (each names as
// many streams as entries may still be read).
const probeCalls = 64

// readLoop reads new entries for the scheduler until ctx is cancelled.
//
// Its cost does not grow with the number of idle streams, and it reads no
// more than the read-ahead has room for. One XREADGROUP reads the streams
// known to have entries ("hot": the last read found some) for as many
// entries as the read-ahead has room for (the least handler time charged
// first when the room does not cover them all); the hot streams the
// scheduler classed slow are read by another one, with their smaller COUNT
// (it runs only when a slow stream's short queue is half empty; the list
// whose first stream is charged least goes first). The other streams are probed
// every probeInterval at most, and whenever the hot ones run dry: one
// script (probeScript) runs XREADGROUP COUNT 1 over as many of them at a
// time as entries may still be read, the least recently probed first, until
// all are probed or the room is taken; so a probe of 1,000 idle streams is
// one command that costs about one XREADGROUP naming them all, and a probe
// that finds entries in all of them reads only what the read-ahead allows
// (the rest are probed next time). When nothing has entries, one blocking
// XREADGROUP over every stream wakes on the first entry appended to any.
// (On a Redis Cluster these are XREADGROUPs of one hash slot each,
// pipelined: slots.go.) Reclaim, discovery and the consumer clean-up run in
// goroutines of their own and never hold up a read.
func (w *Worker) readLoop(ctx context.Context, rediscover func()) {
	// Reads are not cancelled with ctx: entries Redis delivers are pending
	// under this consumer, and a read cut short would leave them unseen
	// until reclaimed. BlockTimeout bounds the wait instead.
	rctx := context.WithoutCancel(ctx)
	var (
		nextProbe time.Time
		errDelay  time.Duration
		uncovered bool // the last probe had no room for every idle stream
	)
	wait := time.NewTimer(time.Hour)
	defer wait.Stop()
	for ctx.Err() == nil {
		if msgs, err := w.collectSlotReads(); err == nil && len(msgs) > 0 {
			w.queueRead(nil, 0, msgs)
		}
		probe := !time.Now().Before(nextProbe) || !w.sched.anyHot()
		req := w.sched.wanted(probe)
		if req.empty() {
			// Nothing wanted (the read-ahead is full, or no stream may be
			// read): wait until the scheduler takes entries (a stream's
			// queue runs low, a slot frees), or the next probe.
			wait.Reset(min(w.cfg.BlockTimeout, probeInterval))
			select {
			case <-ctx.Done():
			case <-w.sched.space:
			case <-wait.C:
			}
			continue
		}
		var err error
		got, budget, moreHot := 0, req.budget, false
		probeIdle := func() {
			if len(req.idle) == 0 {
				return
			}
			nextProbe = time.Now().Add(w.probeEvery(len(req.idle)))
			n := 0
			if budget > 0 {
				var read int
				read, n, err = w.probe(rctx, req.idle, budget)
				got += read
				budget -= read
				if err != nil {
					return
				}
			}
			if uncovered = n < len(req.idle) && budget <= 0; uncovered {
				// The read-ahead had no room to probe them all: the
				// others are probed as soon as it has some (a slot
				// frees), before the hot streams take it, so that
				// streams with entries start together. (A probe that
				// stopped at probeCalls with room left found nothing:
				// the next one goes on where it stopped.)
				nextProbe = time.Time{}
			}
		}
		probeFirst := probe && uncovered
		if probeFirst {
			probeIdle()
		}
		// The hot streams and the slow ones (their own COUNT: a slow
		// stream's part of the read-ahead is smaller), the list read
		// least recently first (parts).
		for _, part := range req.parts() {
			if err != nil {
				break
			}
			keys, count, more := part(budget)
			moreHot = moreHot || more
			if len(keys) > 0 {
				var msgs []*Message
				if msgs, err = w.readNow(rctx, keys, count); err == nil {
					got += w.queueRead(keys, int(count), msgs)
					budget -= len(msgs)
				}
			}
		}
		if err == nil && probe && !probeFirst {
			probeIdle()
		}
		w.sched.endRead()
		switch {
		case err != nil, got > 0, moreHot:
		case w.sched.anyHot() || uncovered:
			// Streams with entries have enough queued, or the read-ahead
			// had no room to probe them all: wait until they take some,
			// or the next probe.
			wait.Reset(max(time.Until(nextProbe), time.Millisecond))
			select {
			case <-ctx.Done():
			case <-w.sched.space:
			case <-wait.C:
			}
		case probe:
			// Nothing anywhere: wait for the first new entry of any stream.
			keys := slices.Concat(req.hot, req.slow, req.idle)
			count := int64(max(1, req.budget/len(keys)))
			var msgs []*Message
			if msgs, err = w.readBlocking(rctx, keys, count, w.cfg.BlockTimeout); err == nil {
				w.queueRead(keys, 0, msgs)
			}
		}
		if err != nil {
			if redis.HasErrorPrefix(err, "NOGROUP") {
				rediscover() // a stream went away or lost its group
			}
			errDelay = min(max(2*errDelay, 50*time.Millisecond), 2*time.Second)
			w.log.Warn("XREADGROUP failed", "err", err, "retry_in", errDelay)
			sleep(ctx, errDelay)
			continue
		}
		errDelay = 0
	}
}

// probeScript reads at most ARGV[3] entries from the streams KEYS, in their
// order: XREADGROUP GROUP ARGV[1] ARGV[2] COUNT 1 over as many of them at a
// time as entries may still be read, until every key is probed or ARGV[3]
// entries are read. It returns {the XREADGROUP replies' streams, the number
// of keys probed}. One command however many streams are probed, and the
// cost of an XREADGROUP naming them all when they have nothing new; but
// never more entries than the read-ahead has room for, however many streams
// have some. (It is XREADGROUP ">" and nothing else: the wire contract's
// reading rule.)
//
// An XREADGROUP that fails (NOGROUP: a stream whose group went away since
// the last discovery) ends the probe with {what was read, the keys probed
// before it, the error}: Redis does not roll a script back, so the entries
// the calls before it delivered are pending under this consumer, and an
// error reply would have dropped them (unheld, unrun until reclaimed a
// visibility timeout later).
var probeScript = redis.NewScript(`
local budget = tonumber(ARGV[3])
local out, i = {}, 1
while i <= #KEYS and budget > 0 do
  local n = math.min(budget, #KEYS - i + 1)
  local args = {'XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS'}
  for j = i, i + n - 1 do args[#args + 1] = KEYS[j] end
  for _ = 1, n do args[#args + 1] = '>' end
  local r = redis.pcall(unpack(args))
  if type(r) == 'table' and r.err then return {out, i - 1, r.err} end
  if r then
    for _, s in ipairs(r) do
      out[#out + 1] = s
      budget = budget - #s[2]
    end
  end
  i = i + n
end
return {out, i - 1}
`)

// probeRead reads at most budget entries from the idle streams keys, in
// their order (probeScript; on a Redis Cluster, rounds of XREADGROUP COUNT 1
// per hash slot, pipelined, each round naming at most as many streams as
// entries may still be read). It returns what it read and how many of keys
// it probed (a prefix). When a round fails after earlier ones delivered
// entries, it returns those entries with the error: Redis delivered them to
// this consumer and they are held (leased), so the caller must queue them.
// Dropped, they were leased for ever and never run — no other worker may
// take an entry whose lease is kept — and held their partition's Kafka
// commit: a Redis Cluster failover (CLUSTERDOWN on one node's round) stalled
// the commits of streams on the nodes that stayed up.
func (w *Worker) probeRead(ctx context.Context, keys []string, budget int) ([]*Message, int, error) {
	if !w.perSlot {
		// At most probeCalls XREADGROUPs inside the script: with little
		// room, the rest are probed next time.
		keys = keys[:min(len(keys), probeChunk, budget*probeCalls)]
		res, err := probeScript.Run(ctx, w.rdb, keys, w.cfg.Group, w.cfg.Consumer, budget).Slice()
		if err != nil {
			return nil, 0, err
		}
		streams, n, callErr, err := parseProbe(res)
		if err != nil {
			return nil, 0, err
		}
		return w.admitRead(ctx, streams), min(n, len(keys)), callErr
	}
	var out []*Message
	groups := slotGroups(keys)
	probed := 0
	for len(groups) > 0 && budget > 0 {
		var round []string
		for len(groups) > 0 && (len(round) == 0 || len(round)+len(groups[0]) <= budget) {
			round = append(round, groups[0]...)
			groups = groups[1:]
		}
		msgs, err := w.readNow(ctx, round, 1)
		if err != nil {
			return out, probed, err
		}
		out = append(out, msgs...)
		probed += len(round)
		budget -= len(msgs)
	}
	return out, probed, nil
}

// probe reads at most budget entries from the idle streams keys (probeRead)
// and queues them — also when a round failed after earlier ones delivered
// entries: those are held, and only the scheduler runs or hands back a held
// entry. It returns how many entries it read and how many of keys it probed.
func (w *Worker) probe(ctx context.Context, keys []string, budget int) (read, probed int, err error) {
	msgs, probed, err := w.probeRead(ctx, keys, budget)
	return w.queueRead(keys[:probed], 0, msgs), probed, err // a probe's COUNT says nothing of a backlog
}

// probeError is the error of an XREADGROUP inside probeScript, a Redis error
// (redis.HasErrorPrefix sees its NOGROUP).
type probeError string

func (e probeError) Error() string { return string(e) }
func (probeError) RedisError()     {}

// parseProbe turns probeScript's reply into XREADGROUP's, the number of keys
// probed and the error of the XREADGROUP that ended the probe (callErr), if
// one did; err is a reply it cannot read.
func parseProbe(res []any) (_ []redis.XStream, _ int, callErr, err error) {
	if len(res) != 2 && len(res) != 3 {
		return nil, 0, nil, fmt.Errorf("probe: want 2 or 3 elements, got %d", len(res))
	}
	if len(res) == 3 {
		msg, _ := res[2].(string)
		callErr = probeError(msg)
	}
	n, _ := res[1].(int64)
	raw, _ := res[0].([]any)
	out := make([]redis.XStream, 0, len(raw))
	for _, r := range raw {
		s, ok := r.([]any)
		if !ok || len(s) != 2 {
			return nil, 0, nil, fmt.Errorf("probe: stream reply %T", r)
		}
		key, _ := s[0].(string)
		es, _ := s[1].([]any)
		xs := redis.XStream{Stream: key}
		for _, e := range es {
			pair, ok := e.([]any)
			if !ok || len(pair) != 2 {
				return nil, 0, nil, fmt.Errorf("probe: entry %T", e)
			}
			id, _ := pair[0].(string)
			kv, _ := pair[1].([]any)
			vals := make(map[string]any, len(kv)/2)
			for j := 0; j+1 < len(kv); j += 2 {
				k, _ := kv[j].(string)
				vals[k] = kv[j+1]
			}
			xs.Messages = append(xs.Messages, redis.XMessage{ID: id, Values: vals})
		}
		out = append(out, xs)
	}
	return out, int(n), callErr, nil
}

// probeEvery is the time between probes of n idle streams while others
// keep the reader busy: probeInterval, and on a Redis Cluster (where each
// idle stream is an XREADGROUP of its own) probeInterval per 100 streams, at
// most BlockTimeout, so that probing stays near 1,000 commands a second.
func (w *Worker) probeEvery(n int) time.Duration {
	if !w.perSlot || n <= 100 {
		return probeInterval
	}
	return max(min(probeInterval*time.Duration((n+99)/100), w.cfg.BlockTimeout), probeInterval)
}

// queueRead hands what a read of keys with COUNT count delivered to the
// scheduler and returns how many entries that was. count is 0 for the probes
// and the blocking read: their COUNT (1, or the budget spread over every
// stream) is not sized to what a stream may start, so a stream that
// returned all of it is not known to have more (see readDone). After the
// scheduler stopped, the entries are handed back at once.
func (w *Worker) queueRead(keys []string, count int, msgs []*Message) int {
	ts := make([]*task, len(msgs))
	for i, m := range msgs {
		ts[i] = &task{m: m, he: m.held}
	}
	if refused := w.sched.readDone(keys, count, ts); len(refused) > 0 {
		w.handBack(refused)
	}
	return len(msgs)
}

// handBack gives back tasks that were never started (shutdown): entries
// read or reclaimed are unclaimed (reclaimable at once, the delivery that
// never ran not counted); entries waiting for a retry are let go as they
// are (reclaimable after the visibility timeout; their next delivery has not
// been counted yet). A stale task (its entry lost, or held again by a newer
// task) is dropped: the entry is not its to give back.
func (w *Worker) handBack(ts []*task) {
	var msgs []*Message
	for _, t := range ts {
		switch {
		case !w.owns(t.he):
		case t.redeliver:
			w.release(t.he)
		default:
			msgs = append(msgs, t.m)
		}
	}
	w.unclaim(msgs)
}

// discoveryLoop reads the registry at once, then every DiscoveryInterval
// (and when kicked), and hands the streams to the scheduler.
func (w *Worker) discoveryLoop(ctx context.Context, kick <-chan struct{}) {
	t := time.NewTicker(w.cfg.DiscoveryInterval)
	defer t.Stop()
	for {
		w.discoverOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-kick:
		}
	}
}

func (w *Worker) discoverOnce(ctx context.Context) {
	// The wire contract version first (checked at start too): a newer
	// ingest may write what this worker would misread, so it stops taking
	// entries. A version that cannot be read (Redis down) is not a change.
	if err := wire.CheckVersion(ctx, w.rdb, w.cfg.Prefix); errors.Is(err, wire.ErrVersion) {
		w.log.Error("the wire contract version changed; stopping: no new entries are taken, running handlers finish, the rest is handed back", "err", err)
		w.stopRun(err)
		return
	} else if err != nil && ctx.Err() == nil {
		w.log.Warn("cannot read the wire contract version", "err", err)
	}
	s, err := w.discover(ctx)
	if err != nil {
		if ctx.Err() == nil {
			w.log.Warn("stream discovery failed", "err", err)
		}
		return
	}
	w.sched.setStreams(s)
	w.stats.streams.Store(int64(len(s)))
	w.discoveredOnce.Do(func() { close(w.discovered) })
}

// unclaim hands entries this consumer holds but has not started back to
// the group: each moves to the consumer "handed-back" with an idle time of
// VisibilityTimeout, so that any worker's next XAUTOCLAIM takes it, and
// with the delivery that was never run taken off its count.
func (w *Worker) unclaim(msgs []*Message) {
	if len(msgs) == 0 {
		return
	}
	byStream := map[string][]any{}
	for _, m := range msgs {
		byStream[m.Stream] = append(byStream[m.Stream], m.ID)
	}
	// Released first: no lease round started from now on extends them. A
	// round that started before sends lease.lua for them anyway, maybe
	// after the script below; it finds them no longer this consumer's
	// (unclaim.lua moves them to the consumer "handed-back") and leaves
	// them alone, and the released hold is not counted as a lost lease.
	for _, m := range msgs {
		w.release(m.held)
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
	}
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
			he := w.holdRead(st.Stream, xm.ID)
			if he == nil {
				continue
			}
			if m := w.admit(ctx, he, xm.Values, 1); m != nil {
				out = append(out, m)
			}
		}
	}
	return out
}

// admit turns a delivered entry into a message to handle, or deals with it
// at once and returns nil: a malformed entry is dead-lettered; a replayed
// entry dead-lettered by another group is acknowledged (it is not ours).
func (w *Worker) admit(ctx context.Context, he *heldEntry, values map[string]any, deliveries int64) *Message {
	stream, id := he.ref.stream, he.ref.id
	m, err := newMessage(stream, id, values, deliveries)
	m.held = he
	he.mayHaveRuns = deliveries > 1
	if err != nil {
		w.log.Warn("malformed entry: dead-lettering it", "stream", stream, "id", id, "err", err)
		w.deadLetter(ctx, m, wire.ReasonMalformed, err)
		return nil
	}
	if m.Replayed {
		if info, ok := wire.DecodeDLQInfo(values); ok && info.Group != "" && info.Group != w.cfg.Group {
			w.acks.add(he)
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
