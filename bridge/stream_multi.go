package bridge

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/wire"
)

// The MULTI/EXEC append path. Redis spends about twice the CPU per record on
// a redis.call('XADD') inside Lua as on a plain XADD
// (docs/profiles/why-10a-redis-cpu-per-record.txt), so when the ACL allows
// MULTI, EXEC and RENAME (probed at start, startup.go) each batch of
// AppendBatch records is appended as one transaction (appendMultiBatches):
//
//	MULTI
//	EVALSHA guard  stream append-key open expected logend
//	XADD append-key NOMKSTREAM <offset>-1 field value ...   (once per record)
//	EVALSHA guard  stream append-key close
//	EXEC
//
// The guard makes exactly appendScript's checks (stream missing, top behind,
// top ahead and not a record, or at or above the log end) and, only when they
// all pass, renames the stream to the append key: the XADDs go to that key,
// and the close renames it back. Fail closed by construction: a guard that
// refuses, errors (NOSCRIPT after a restart or SCRIPT FLUSH, NOPERM, a
// runtime error) or never runs leaves no append key, and XADD ... NOMKSTREAM
// on a key that does not exist adds nothing. (The other way round — the
// XADDs on the stream, the guard renaming it away only when it refuses —
// would let every XADD land unchecked whenever the guard fails to run.)
// An ID at or below the top is refused by Redis itself: that is the skip of
// what is already there (the guard checked the top is a record kbridge
// wrote). MULTI makes it one step for every other client: none ever sees the
// stream under the append key, or missing. The append key is unique to the
// transaction, so a key left over (see docs/operations.md) is never written.
var guardScript = redis.NewScript(luaTop + `
-- KEYS[1] stream, KEYS[2] append key; ARGV[1] 'open' or 'close'; open:
-- ARGV[2] expected top offset (-1: empty), ARGV[3] log end (-1: unknown).
-- open returns {status, top}: status 0 renamed (append), 1 no stream, 2 top
-- behind, 3 top ahead and not a record, 4 the append key exists already.
-- close returns 1 when it renamed the append key back, else 0.
if ARGV[1] == 'close' then
  if redis.call('EXISTS', KEYS[2]) == 1 and redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('RENAME', KEYS[2], KEYS[1])
    return 1
  end
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {4, -1} end
local top, _, last = streaminfo(KEYS[1])
if top == nil then return {1, -1} end
local expected = tonumber(ARGV[2])
if top < expected then return {2, top} end
if top > expected then
  local logend = tonumber(ARGV[3])
  if (logend >= 0 and top >= logend) or ours(KEYS[1], last) ~= 1 then return {3, top} end
end
-- the last thing it does: an error above leaves the stream where it is
redis.call('RENAME', KEYS[1], KEYS[2])
return {0, top}
`)

// appendNonce makes append keys unique: a random start per process, then a
// counter.
var appendNonce atomic.Uint64

func init() { appendNonce.Store(rand.Uint64() >> 1) }

// errAppendKeyExists: the guard found the transaction's append key there
// already. Cannot happen while MULTI holds (the key is unique to it).
var errAppendKeyExists = errors.New("append key exists already")

// appendMultiBatches appends recs in transactions of batchSize records
// (appendMulti), one round trip each, one after the other, each expecting
// the top the previous one leaves; a loss or a stray top stops it. A
// transaction of a batch rather than of the whole chunk: Redis runs a
// transaction without serving anyone else, and holds all its arguments
// until EXEC (for 1 KB records, a chunk-wide transaction cost Redis more CPU
// per record than batch-wide ones, which cost what plain XADDs do).
// After a NOSCRIPT the rest of the batches send the script's text (EVAL):
// at most one EVALSHA is refused per call.
func (s *stream) appendMultiBatches(ctx context.Context, expected, logEnd int64, recs []wire.Record) (appendResult, error) {
	res := appendResult{top: expected}
	eval := false
	for start := 0; start < len(recs); start += s.batchSize {
		batch := recs[start:min(start+s.batchSize, len(recs))]
		r, err := s.appendMulti(ctx, max(expected, res.top), logEnd, batch, &eval)
		if err != nil {
			return appendResult{}, err
		}
		r.added += res.added
		if r.lost || r.foreign {
			return r, nil
		}
		res = r
		res.top = max(res.top, batch[len(batch)-1].Offset)
	}
	return res, nil
}

// appendMulti appends recs in one MULTI/EXEC transaction:
// see guardScript. *eval as in appendWith: EVALSHA first; after NOSCRIPT
// once again with EVAL, never a third time, and *eval set.
func (s *stream) appendMulti(ctx context.Context, expected, logEnd int64, recs []wire.Record, evalp *bool) (appendResult, error) {
	eval := *evalp
	fence := wire.AppendKey(s.key, strconv.FormatUint(appendNonce.Add(1), 36))
	sc := getScratch()
	defer putScratch(sc)
	sc.reset(len(recs))
	keys := append(sc.keys[:0], s.key, fence)
	sc.keys = keys
	run := guardScript.EvalSha
	if eval {
		run = guardScript.Eval
	}
	pipe := s.rdb.TxPipeline()
	args := append(sc.args[:0], "open", sc.num(expected), sc.num(logEnd))
	guard := run(ctx, pipe, keys, args...)
	var fenceArg any = fence
	xadds := sc.xadds[:0]
	for i := range recs {
		// XADD fence NOMKSTREAM <offset>-1 fields: appendRecord's
		// offset and field count slots become NOMKSTREAM and the ID
		mark := len(args)
		args = append(args, "xadd", fenceArg)
		args = sc.appendRecord(args, &recs[i])
		args[mark+2], args[mark+3] = "NOMKSTREAM", sc.id(recs[i].Offset)
		c := redis.NewStatusCmd(ctx, args[mark:len(args):len(args)]...)
		_ = pipe.Process(ctx, c)
		xadds = append(xadds, c)
	}
	args = append(args, "close")
	closing := run(ctx, pipe, keys, args[len(args)-1:]...)
	sc.args, sc.xadds = args, xadds
	cmds, err := pipe.Exec(ctx)
	if err != nil && redis.HasErrorPrefix(err, "EXECABORT") {
		// Redis refused a command while queueing it (OOM under
		// noeviction, say): nothing ran; report that command's own error,
		// which is what the caller looks at (redis is full), not EXECABORT
		for _, c := range cmds {
			if cerr := c.Err(); cerr != nil && !redis.HasErrorPrefix(cerr, "EXECABORT") {
				return appendResult{}, fmt.Errorf("append to %s (MULTI/EXEC): %w", s.key, cerr)
			}
		}
		return appendResult{}, fmt.Errorf("append to %s (MULTI/EXEC): %w", s.key, err)
	}
	if err != nil && err != firstCmdErr(cmds) {
		// MULTI or EXEC failed (EXECABORT, NOPERM, connection): the
		// replies are not the commands' own
		return appendResult{}, fmt.Errorf("append to %s (MULTI/EXEC): %w", s.key, err)
	}
	v, gerr := guard.Int64Slice()
	if isScriptMiss(gerr) && !eval {
		// nothing was appended: no append key, the XADDs found no key
		*evalp = true
		return s.appendMulti(ctx, expected, logEnd, recs, evalp)
	}
	res := appendResult{top: expected}
	if gerr == nil && len(v) != 2 {
		gerr = fmt.Errorf("guard: unexpected reply %v", v)
	}
	if gerr == nil {
		switch v[0] {
		case 0:
			res.top = max(res.top, v[1])
		case 1, 2:
			res.lost, res.top = true, v[1]
		case 3:
			res.foreign, res.top = true, v[1]
		case 4:
			gerr = fmt.Errorf("%w: %s", errAppendKeyExists, fence)
		default:
			gerr = fmt.Errorf("guard: unexpected status %v", v)
		}
	}
	open := gerr == nil && v[0] == 0
	for i, c := range xadds {
		err := c.Err()
		switch {
		case err == nil && c.Val() == string(sc.ids[i]):
			if !open {
				// cannot happen: no append key unless the guard made it
				return appendResult{}, fmt.Errorf("append to %s: record %d added with the guard refusing (%v, %v)", s.key, recs[i].Offset, v, gerr)
			}
			res.added++
			res.top = max(res.top, recs[i].Offset)
		case errors.Is(err, redis.Nil):
			// no append key: the guard refused or failed
			if open {
				return appendResult{}, fmt.Errorf("append to %s: the append key %s vanished inside the transaction", s.key, fence)
			}
		case open && isIDTooSmall(err):
			// at or below the top, which the guard found is a record
			// kbridge wrote: already there
		case err != nil:
			return appendResult{}, fmt.Errorf("append to %s: XADD %d: %w", s.key, recs[i].Offset, err)
		default:
			return appendResult{}, fmt.Errorf("append to %s: XADD %d: unexpected reply %q", s.key, recs[i].Offset, c.Val())
		}
	}
	if n, err := closing.Int64(); err != nil || (n == 1) != open {
		// cannot happen inside one EXEC (the same script as the guard,
		// which ran): say so loudly, the stream may be under the
		// append key
		return appendResult{}, fmt.Errorf("append to %s: closing the transaction: renamed back %d, want %v: %v (if %s exists and %s does not, RENAME it back)", s.key, n, open, err, fence, s.key)
	}
	if gerr != nil {
		return appendResult{}, fmt.Errorf("append to %s: %w", s.key, gerr)
	}
	return res, nil
}

// firstCmdErr is the error go-redis's Exec returns when every failure is a
// command's own reply.
func firstCmdErr(cmds []redis.Cmder) error {
	for _, c := range cmds {
		if err := c.Err(); err != nil {
			return err
		}
	}
	return nil
}

// isNoPerm reports a command the ACL refuses: NOPERM itself, inside an
// EXECABORT, or a command a script called ("The user executing the script
// can't run this command", Redis 7.0).
func isNoPerm(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	return strings.Contains(s, "NOPERM") || strings.Contains(s, "user executing the script can't run")
}

// isIDTooSmall reports XADD refusing an ID at or below the stream's top.
// (HasErrorPrefix drops the "ERR " in front.)
func isIDTooSmall(err error) bool {
	return err != nil && redis.HasErrorPrefix(err, "The ID specified in XADD is equal or smaller")
}
