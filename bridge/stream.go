package bridge

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/wire"
	"github.com/kbridge/kbridge/tracker"
)

// luaTop is shared by the scripts. streaminfo returns the offset covered by
// the stream's last-generated-id (which survives XTRIM and XDEL), or nil when
// the stream does not exist; lastdelivered the groups' last-delivered-ids. XINFO STREAM is used because it is the only command that
// returns last-generated-id on redis-server 7 and on miniredis alike.
const luaTop = `
local function streaminfo(key)
  -- only a missing key is "no stream": any other error (ACL, wrong type)
  -- must reach the caller, not read as Redis having lost the stream
  if redis.call('EXISTS', key) == 0 then return nil end
  local info = redis.call('XINFO', 'STREAM', key)
  local last, len = '0-0', 0
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i+1]
    elseif info[i] == 'length' then len = info[i+1] end
  end
  -- miniredis reports '' for a stream that never had an entry
  local ms, seq = string.match(last, '^(%d+)%-(%d+)$')
  if ms == nil then return -1, len, '0-0' end
  local top = tonumber(ms)
  if tonumber(seq) == 0 then top = top - 1 end
  return top, len, last
end

-- every consumer group that exists on a stream, in XINFO GROUPS order:
-- {{name, last-delivered-id}, ...}. All of them hold the commit and the trim
-- (invariant 2), whoever created them: a group is removed by an operator
-- (XGROUP DESTROY, kbridge groups remove), never by a flag.
local function groups(key)
  local out = {}
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local name, last
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i+1] elseif g[i] == 'last-delivered-id' then last = g[i+1] end
    end
    table.insert(out, {name, last})
  end
  return out
end

-- whether entry id with fields f is a record kbridge wrote: its IDs are
-- <offset>-1 and its entries start with topic, partition, offset
-- (docs/wire.md)
local function isrecord(id, f)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  return ms ~= nil and seq == '1' and f[1] == 'topic' and f[3] == 'partition' and f[5] == 'offset' and f[6] == ms
end

-- whether the stream's top entry (ID last) is a record kbridge wrote: 1 yes,
-- 0 no (another program's XADD), -1 the entry is gone (deleted or trimmed).
local function ours(key, last)
  local e = redis.call('XRANGE', key, last, last)
  if #e == 0 then return -1 end
  if isrecord(e[1][1], e[1][2]) then return 1 end
  return 0
end

-- the highest entry below ID id, {id, fields}, or nil when none. XRANGE
-- only (the ACL of docs/operations.md has no XREVRANGE): a binary search for
-- the highest millisecond part with an entry below id, then that part's
-- entries in order.
local function entrybelow(key, id)
  if #redis.call('XRANGE', key, '-', '(' .. id, 'COUNT', 1) == 0 then return nil end
  local lo, hi = 0, math.min(tonumber(string.match(id, '^(%d+)')), 2^53)
  while lo < hi do
    local mid = math.floor((lo + hi + 1) / 2)
    if #redis.call('XRANGE', key, string.format('%d-0', mid), '(' .. id, 'COUNT', 1) > 0 then lo = mid else hi = mid - 1 end
  end
  local from, e = string.format('%d-0', lo), nil
  while true do
    local es = redis.call('XRANGE', key, from, '(' .. id, 'COUNT', 100)
    if #es > 0 then e = es[#es] end
    if #es < 100 then return e end
    from = '(' .. e[1]
  end
end

-- the offset of the highest record kbridge wrote below the top (ID last),
-- -1 when there is none, or none below the 10 entries just under the top
local function recordbelow(key, last)
  local id = last
  for _ = 1, 10 do
    local e = entrybelow(key, id)
    if e == nil then return -1 end
    if isrecord(e[1], e[2]) then return tonumber(string.match(e[1], '^(%d+)')) end
    id = e[1]
  end
  return -1
end

-- the first entry after a group's last-delivered-id, '' when none
local function nextafter(key, last)
  local nxt = redis.call('XRANGE', key, '(' .. last, '+', 'COUNT', 1)
  if #nxt > 0 then return nxt[1][1] end
  return ''
end
`

// appendScript appends a batch only on top of the stream top the caller
// expects (invariant 1: no holes). Entries at or below the actual top are
// already there (a retry, or another ingest got there first) and are skipped;
// a top below the expected one means Redis lost writes, and nothing is
// appended. It never creates the stream: a missing stream is a loss too. A top
// above the expected one that cannot be a record — at or above the Kafka log
// end, an entry kbridge did not write, or an entry gone (kbridge never
// removes one above what the caller appended: its trims stay below the
// commit) — appends nothing either: skipping the batch's records as "already
// there" would lose them (invariant 3; tracker.Partition.Stray).
//
// KEYS[1] stream; ARGV[1] expected top offset (-1: empty); ARGV[2] the log
// end (-1: unknown); ARGV[3] n; then n times: offset, field count f, f
// field/value strings. Returns {status, top, added}: status 0 appended, 1 no
// stream, 2 top behind, 3 top ahead and not a record.
var appendScript = redis.NewScript(luaTop + `
local top, _, last = streaminfo(KEYS[1])
if top == nil then return {1, -1, 0} end
local expected = tonumber(ARGV[1])
if top < expected then return {2, top, 0} end
if top > expected then
  local logend = tonumber(ARGV[2])
  if (logend >= 0 and top >= logend) or ours(KEYS[1], last) ~= 1 then return {3, top, 0} end
end
local n = tonumber(ARGV[3])
local i, added = 4, 0
for _ = 1, n do
  local off, nf = tonumber(ARGV[i]), tonumber(ARGV[i+1])
  if off > top then
    redis.call('XADD', KEYS[1], ARGV[i] .. '-1', unpack(ARGV, i+2, i+1+nf))
    top = off
    added = added + 1
  end
  i = i + 2 + nf
end
return {0, top, added}
`)

// observeScript reads, atomically, everything the commit needs (invariant 2):
// the stream's top and length and, for every consumer group on the stream
// (the configured ones and any other: a group another ingest or an operator
// created counts just the same), its pending count, its lowest pending entry
// (with the consumer holding it, idle time and delivery count) and the first
// entry after its last-delivered-id. One script makes the reads one
// snapshot, so no entry can slip between them.
//
// It also says whether the top entry is one kbridge wrote (see ours), so that
// an entry another program wrote above the top is told from a zombie's, and,
// when it is not, which is the highest record below it (recordbelow).
//
// KEYS[1] stream; ARGV the configured group names. Returns {0} when the
// stream does not exist, else {1, top, length, ours, below, g1, g2, ...}
// with, per group on the stream, g = {name, 1, pending, lowest-id, consumer,
// idle-ms, deliveries, next-id}, then g = {name, 0} per configured group
// missing.
var observeScript = redis.NewScript(luaTop + `
local top, len, last = streaminfo(KEYS[1])
if top == nil then return {0} end
local mine, below = 1, -1
if top >= 0 then mine = ours(KEYS[1], last) end
-- an empty stream (fully trimmed: its top gone too) has none to look for
if mine ~= 1 and len > 0 then below = recordbelow(KEYS[1], last) end
local out = {1, top, len, mine, below}
local seen = {}
for _, g in ipairs(groups(KEYS[1])) do
  local name, last = g[1], g[2]
  seen[name] = true
  local count = redis.call('XPENDING', KEYS[1], name)[1]
  local low = {'', '', 0, 0}
  if count > 0 then low = redis.call('XPENDING', KEYS[1], name, '-', '+', 1)[1] end
  table.insert(out, {name, 1, count, low[1], low[2], low[3], low[4], nextafter(KEYS[1], last)})
end
for _, name in ipairs(ARGV) do
  if not seen[name] then table.insert(out, {name, 0}) end
end
return out
`)

// trimScript trims below min(ARGV[1], the frontier read afresh over every
// group on the stream), so that a trim point computed before Redis came back
// from an older snapshot, or before another ingest or an operator created a
// group, cannot delete entries a group still holds pending or undelivered
// (invariants 2 and 4). It trims nothing when the stream or a configured
// group is missing, or when the stream has no group at all.
//
// KEYS[1] stream; ARGV[1] offset bound (the committed offset); ARGV[2..]
// configured group names. Returns the number of entries trimmed.
var trimScript = redis.NewScript(luaTop + `
local top = streaminfo(KEYS[1])
if top == nil then return 0 end
local function offset(id) return tonumber(string.match(id, '^(%d+)')) end
local below = math.min(tonumber(ARGV[1]), top + 1)
local seen = {}
local gs = groups(KEYS[1])
if #gs == 0 then return 0 end
for _, g in ipairs(gs) do
  local name, last = g[1], g[2]
  seen[name] = true
  local low = redis.call('XPENDING', KEYS[1], name, '-', '+', 1)
  if #low > 0 then below = math.min(below, offset(low[1][1])) end
  local nid = nextafter(KEYS[1], last)
  if nid ~= '' then below = math.min(below, offset(nid)) end
end
for i = 2, #ARGV do
  if not seen[ARGV[i]] then return 0 end
end
if below <= 0 then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-0', below))
`)

// rewindGroupsScript sets back, to the stream's top, every group whose
// last-delivered-id is above it. Redis never lowers a stream's top by itself;
// an operator does (XSETID, after deleting an entry another program wrote:
// docs/operations.md). A group left above the top would never be delivered
// the records appended next — its first undelivered entry would be none — and
// the commit would pass them.
//
// With ARGV[1], an ID below the top, the groups above it are set back to it
// instead: when a stall on a stray entry lifts, the highest record the ingest
// knows every group read (they read in order, and the stray entry was above
// it). Records another owner appended between the operator's XSETID and this
// call are then delivered, not skipped by a group set back to the new top.
//
// KEYS[1] stream; ARGV[1] optional bound. Returns the number of groups set
// back.
var rewindGroupsScript = redis.NewScript(luaTop + `
local top, _, last = streaminfo(KEYS[1])
if top == nil then return 0 end
-- miniredis reports '' for a group or stream at "0-0"
local function parse(id)
  local ms, seq = string.match(id or '', '^(%d+)%-(%d+)$')
  if ms == nil then return 0, 0 end
  return tonumber(ms), tonumber(seq)
end
local tms, tseq = parse(last)
if ARGV[1] ~= nil then
  local bms, bseq = parse(ARGV[1])
  if bms < tms or (bms == tms and bseq < tseq) then
    last, tms, tseq = string.format('%d-%d', bms, bseq), bms, bseq
  end
end
local n = 0
for _, g in ipairs(groups(KEYS[1])) do
  local ms, seq = parse(g[2])
  if ms > tms or (ms == tms and seq > tseq) then
    redis.call('XGROUP', 'SETID', KEYS[1], g[1], last)
    n = n + 1
  end
end
return n
`)

// setBack sets every group whose last-delivered-id is above record off (None:
// "0-0"), or above the stream's top when that is lower, back to it
// (rewindGroupsScript).
func (s *stream) setBack(ctx context.Context, off int64) error {
	id := "0-0"
	if off != tracker.None {
		id = wire.EntryID(off)
	}
	if err := rewindGroupsScript.Run(ctx, s.rdb, []string{s.key}, id).Err(); err != nil {
		return fmt.Errorf("set back groups above %s on %s: %w", id, s.key, err)
	}
	return nil
}

// stream is the Redis side of one partition.
type stream struct {
	rdb       redis.UniversalClient
	key       string
	registry  string
	groups    []string
	batchSize int
	// multi, when set and true, makes appends one MULTI/EXEC each
	// (appendMulti); else the append script. Shared by the ingest's
	// streams: the start-up probe sets it, a NOPERM clears it.
	multi *atomic.Bool
}

// ensure creates every worker group at ID 0 with MKSTREAM (a group made at $
// would skip entries), sets back any group whose last-delivered-id is above
// the stream's top (rewindGroupsScript), and registers the stream for worker
// discovery.
func (s *stream) ensure(ctx context.Context) error {
	for _, g := range s.groups {
		err := s.rdb.XGroupCreateMkStream(ctx, s.key, g, "0").Err()
		if err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
			return fmt.Errorf("create group %s on %s: %w", g, s.key, err)
		}
	}
	if err := rewindGroupsScript.Run(ctx, s.rdb, []string{s.key}).Err(); err != nil {
		return fmt.Errorf("set back groups above the top of %s: %w", s.key, err)
	}
	if err := s.rdb.SAdd(ctx, s.registry, s.key).Err(); err != nil {
		return fmt.Errorf("register %s: %w", s.key, err)
	}
	return nil
}

// appendResult is what the append scripts of one batch concluded.
type appendResult struct {
	top   int64 // the stream's top after the appends
	added int   // entries added (the rest were already there)
	lost  bool  // the stream is gone or its top is behind the expected one
	// foreign: the top is ahead of the expected one and cannot be a record
	// (at or above the log end, or not written by kbridge): nothing added.
	foreign bool
}

// append writes recs (consecutive Kafka records of the partition, offsets
// rising) on top of expected, in script calls of batchSize pipelined in one
// round trip. Each call expects the top the previous one leaves, so a loss
// stops the rest of the pipeline from appending too. logEnd is the
// partition's log end (-1: unknown): a top at or above it is not a record.
// recs may alias fetch buffers: they are written out before append returns.
func (s *stream) append(ctx context.Context, expected, logEnd int64, recs []wire.Record) (appendResult, error) {
	if s.multi != nil && s.multi.Load() {
		res, err := s.appendMultiBatches(ctx, expected, logEnd, recs)
		if isNoPerm(err) && s.multi.CompareAndSwap(true, false) {
			// the ACL changed since the start-up probe. RENAME or EXEC
			// refused: nothing was appended (no append key, or no
			// EXEC). MULTI refused: the commands ran one by one, the
			// guard's checks before its RENAME still holding, but for
			// that moment others could find the stream missing
			// (docs/operations.md). The append script from now on;
			// this batch is fetched again, its records skipped if they
			// landed.
			err = fmt.Errorf("%w (the append script from now on: add +multi +exec +rename to the ACL rule, docs/operations.md)", err)
		}
		return res, err
	}
	return s.appendWith(ctx, expected, logEnd, recs, false)
}

// appendWith is append sending the script's SHA (EVALSHA), or with eval its
// text (EVAL). The first try sends the SHA; if Redis does not know the
// script (NOSCRIPT: a restart, SCRIPT FLUSH, a failover to a replica that
// never ran it), the batch is sent once more with EVAL — which also caches
// the script for the next calls — and never a third time, whatever Redis
// says: no loop however often the cache is flushed, and no SCRIPT LOAD (the
// documented ACL rule does not need it for the ingest).
func (s *stream) appendWith(ctx context.Context, expected, logEnd int64, recs []wire.Record, eval bool) (appendResult, error) {
	pipe := s.rdb.Pipeline()
	sc := getScratch()
	sc.reset(len(recs))
	if len(sc.keys) == 0 || sc.keys[0] != s.key {
		sc.keys = append(sc.keys[:0], s.key)
	}
	cmds := sc.cmds[:0]
	exp := expected
	for start := 0; start < len(recs); start += s.batchSize {
		batch := recs[start:min(start+s.batchSize, len(recs))]
		args := append(sc.args[:0], sc.num(exp), sc.num(logEnd), sc.num(int64(len(batch))))
		for i := range batch {
			args = sc.appendRecord(args, &batch[i])
		}
		// EvalSha and Eval copy args (not what they point to, which stays
		// put until Exec): the slice is reused for the next call.
		if eval {
			cmds = append(cmds, appendScript.Eval(ctx, pipe, sc.keys, args...))
		} else {
			cmds = append(cmds, appendScript.EvalSha(ctx, pipe, sc.keys, args...))
		}
		sc.args = args
		exp = max(exp, batch[len(batch)-1].Offset)
	}
	sc.cmds = cmds
	// The NOSCRIPT retry below takes a scratch of its own (appendWith
	// again); this one goes back to the pool when the replies are read.
	defer putScratch(sc)
	if _, err := pipe.Exec(ctx); err != nil && (eval || !isScriptMiss(err)) {
		return appendResult{}, fmt.Errorf("append to %s: %w", s.key, err)
	}
	res := appendResult{top: expected}
	for _, c := range cmds {
		v, err := c.Int64Slice()
		if isScriptMiss(err) && !eval {
			// Redis did not know the script: send the batch again with its
			// text. The appends are idempotent: what the calls before this
			// one added is skipped, and counted here.
			r, err := s.appendWith(ctx, expected, logEnd, recs, true)
			r.added += res.added
			return r, err
		}
		if err != nil {
			return appendResult{}, fmt.Errorf("append to %s: %w", s.key, err)
		}
		switch v[0] {
		case 0:
		case 3:
			res.foreign, res.top = true, v[1]
			return res, nil
		default:
			res.lost, res.top = true, v[1]
			return res, nil
		}
		res.top = max(res.top, v[1])
		res.added += int(v[2])
	}
	return res, nil
}

func isScriptMiss(err error) bool {
	return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT")
}

// snapshot is an observation plus what the status view needs.
type snapshot struct {
	tracker.Observation
	oldest oldestPending
}

// oldestPending is the lowest pending entry over all groups: the one that
// holds the commit back.
type oldestPending struct {
	offset     int64 // tracker.None when nothing is pending
	group      string
	consumer   string
	idle       time.Duration
	deliveries int64
}

// observe reads one atomic snapshot of the stream.
func (s *stream) observe(ctx context.Context) (snapshot, error) {
	args := make([]any, len(s.groups))
	for i, g := range s.groups {
		args[i] = g
	}
	v, err := observeScript.Run(ctx, s.rdb, []string{s.key}, args...).Slice()
	if err != nil {
		return snapshot{}, fmt.Errorf("observe %s: %w", s.key, err)
	}
	return parseObservation(v)
}

func parseObservation(v []any) (snapshot, error) {
	snap := snapshot{oldest: oldestPending{offset: tracker.None}}
	bad := func(what string) (snapshot, error) {
		return snapshot{}, fmt.Errorf("observe: unexpected reply (%s): %v", what, v)
	}
	if len(v) == 0 {
		return bad("empty")
	}
	if n, _ := v[0].(int64); n == 0 {
		snap.Top = tracker.None
		return snap, nil
	}
	if len(v) < 5 {
		return bad("length")
	}
	snap.Exists = true
	snap.Top, _ = v[1].(int64)
	snap.Length, _ = v[2].(int64)
	switch ours, _ := v[3].(int64); ours {
	case 1:
		snap.TopEntry = tracker.TopRecord
	case 0:
		snap.TopEntry = tracker.TopForeign
	default:
		snap.TopEntry = tracker.TopGone
	}
	snap.RecordBelow, _ = v[4].(int64)
	for _, gv := range v[5:] {
		f, ok := gv.([]any)
		if !ok || len(f) < 2 {
			return bad("group")
		}
		name, _ := f[0].(string)
		g := tracker.Group{Name: name, LowestPending: tracker.None, NextUndelivered: tracker.None}
		if n, _ := f[1].(int64); n == 0 {
			g.Missing = true
			snap.Groups = append(snap.Groups, g)
			continue
		}
		if len(f) != 8 {
			return bad("group fields")
		}
		g.Pending, _ = f[2].(int64)
		if id, _ := f[3].(string); id != "" {
			off, err := wire.ParseID(id)
			if err != nil {
				return snapshot{}, err
			}
			g.LowestPending = off
			if snap.oldest.offset == tracker.None || off < snap.oldest.offset {
				idle, _ := f[5].(int64)
				snap.oldest = oldestPending{offset: off, group: name, consumer: fmt.Sprint(f[4]),
					idle: time.Duration(idle) * time.Millisecond}
				snap.oldest.deliveries, _ = f[6].(int64)
			}
		}
		if id, _ := f[7].(string); id != "" {
			off, err := wire.ParseID(id)
			if err != nil {
				return snapshot{}, err
			}
			g.NextUndelivered = off
		}
		snap.Groups = append(snap.Groups, g)
	}
	return snap, nil
}

// trim removes the entries below offset and below the frontier as it is
// now (XTRIM MINID in trimScript); Top survives.
func (s *stream) trim(ctx context.Context, below int64) (int64, error) {
	args := make([]any, 0, 1+len(s.groups))
	args = append(args, below)
	for _, g := range s.groups {
		args = append(args, g)
	}
	n, err := trimScript.Run(ctx, s.rdb, []string{s.key}, args...).Int64()
	if err != nil {
		return 0, fmt.Errorf("trim %s below %d: %w", s.key, below, err)
	}
	return n, nil
}

// publish writes the partition's status hash (with a TTL) so that redis-cli
// alone shows what the ingest is doing.
func (s *stream) publish(ctx context.Context, ttl time.Duration, st PartitionStatus) error {
	key := wire.StatusKey(s.key)
	pipe := s.rdb.Pipeline()
	pipe.HSet(ctx, key, st.fields()...)
	pipe.PExpire(ctx, key, ttl)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("publish status of %s: %w", s.key, err)
	}
	return nil
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
