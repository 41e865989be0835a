package worker

import "github.com/redis/go-redis/v9"

// The Lua scripts below touch one partition's keys only (the stream, its
// replay and dead-letter streams share the hash tag), so they run on Redis
// Cluster too. Each checks ownership with XPENDING first: Redis runs a script
// atomically, so no other worker can claim or acknowledge the entry between
// the check and the change.
//
// Delivery counts are set explicitly with RETRYCOUNT: XCLAIM JUSTID does not
// increment the count on redis-server but does on miniredis, and RETRYCOUNT
// means the same on both.

// leaseScript resets the idle time of the entries that the consumer still
// owns and returns the IDs it no longer owns.
// KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3...] entry IDs.
var leaseScript = redis.NewScript(leaseSource)

const leaseSource = `
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p == 1 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID', 'RETRYCOUNT', p[1][4])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
`

// redeliverScript counts a new delivery of an entry the consumer owns (a
// retry) and returns the new delivery count, or -1 if the consumer no longer
// owns it. KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] ID.
var redeliverScript = redis.NewScript(`
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #p == 0 then return -1 end
local n = p[1][4] + 1
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID', 'RETRYCOUNT', n)
return n
`)

// deadLetterScript appends a dead letter and acknowledges the entry, both or
// neither. It does nothing (returns 0) unless the entry is pending under
// this consumer: somebody acknowledged or dead-lettered it already, or
// another worker reclaimed it (our lease lapsed) and is running it now.
// KEYS[1] stream, KEYS[2] dead-letter stream; ARGV[1] group, ARGV[2]
// consumer, ARGV[3] ID, ARGV[4...] the dead letter's field/value pairs.
var deadLetterScript = redis.NewScript(`
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #p == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
`)

// reclaimScript is XAUTOCLAIM that also returns the delivery count of each
// entry it claimed: {next cursor, entries, counts}. The entries this
// consumer still holds (ARGV[6...]: running, queued or waiting for a retry,
// their lease extension failed for a visibility timeout) are not returned:
// XAUTOCLAIM just reset their idle time, which is a lease extension, and
// their delivery count is put back to what it was, since nothing new was
// delivered. Running them a second time, in parallel, would be a duplicate
// that no lease check can see (the owner did not change).
// KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle (ms),
// ARGV[4] cursor, ARGV[5] count, ARGV[6...] IDs held by the consumer.
var reclaimScript = redis.NewScript(`
local held = {}
for i = 6, #ARGV do held[ARGV[i]] = true end
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local entries, counts = {}, {}
for _, e in ipairs(r[2]) do
  if type(e) == 'table' then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    local n = 1
    if #p == 1 then n = p[1][4] end
    if held[e[1]] then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, e[1], 'JUSTID', 'RETRYCOUNT', math.max(n - 1, 0))
    else
      entries[#entries + 1] = e
      counts[#counts + 1] = n
    end
  end
end
return {r[1], entries, counts}
`)

// unclaimScript hands back entries the consumer holds but did not start
// (shutdown): each one it still owns gets an idle time of ARGV[3] ms, so the
// next XAUTOCLAIM of any worker takes it, and its delivery count less the
// delivery that was never run. KEYS[1] stream; ARGV[1] group, ARGV[2]
// consumer, ARGV[3] idle (ms), ARGV[4...] IDs.
var unclaimScript = redis.NewScript(`
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p == 1 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID', 'RETRYCOUNT', math.max(p[1][4] - 1, 0))
  end
end
return 0
`)

// delConsumerScript deletes a consumer only if it has nothing pending
// (XGROUP DELCONSUMER would drop its pending entries, and the ingest's commit
// would pass them). Returns -1 when the consumer still has pending entries.
// KEYS[1] stream; ARGV[1] group, ARGV[2] consumer.
var delConsumerScript = redis.NewScript(`
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
`)
