-- start.lua: record a handler start (a run) on an entry the consumer owns.
-- KEYS[1] stream, KEYS[2] the group's runs hash (<stream>:runs:<group>); ARGV[1] group,
-- ARGV[2] consumer, ARGV[3] entry ID, ARGV[4] max runs, ARGV[5] 1 to count a
-- new delivery (a retry after a failure), ARGV[6] 1 to count a run (0: a
-- retry after a back-off, which counts nothing), ARGV[7] (optional, default
-- 0) the runs the consumer knows the entry had (its own unrecorded first
-- run: a delivery with count 1 starts without this script).
-- Returns {-1, 0} if the consumer no longer owns the entry. Else, with a run
-- to count: {0, runs} and nothing changed if the entry already ran max times
-- (each run ended without an outcome: dead-letter it); otherwise the run is
-- counted (HSET), the delivery too if asked (XCLAIM RETRYCOUNT), and it
-- returns {delivery count, runs}. A fresh hold (not a retry) had at most
-- count - 1 runs before it: a larger record is stale (the ID was used again
-- after its entry went) and counts as that. An entry still at count 1 cannot
-- have a record (start.lua counts the delivery of every retry): with ARGV[7]
-- its runs are ARGV[7], whatever a stale record says.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #p == 0 then return {-1, 0} end
local n = p[1][4]
local runs = tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0')
if ARGV[6] == '1' and ARGV[5] ~= '1' and runs > n - 1 then runs = math.max(n - 1, 0) end
local known = tonumber(ARGV[7] or '0')
if known > 0 and n <= 1 then runs = known else runs = math.max(runs, known) end
if ARGV[6] == '1' then
  if runs >= tonumber(ARGV[4]) then return {0, runs} end
  runs = runs + 1
  redis.call('HSET', KEYS[2], ARGV[3], runs)
end
if ARGV[5] == '1' then
  n = n + 1
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID', 'RETRYCOUNT', n)
end
return {n, runs}
