-- redeliver.lua: count a new delivery (a retry) of an entry the consumer owns.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] entry ID.
-- Returns the new delivery count, or -1 if the consumer no longer owns it.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #p == 0 then return -1 end
local n = p[1][4] + 1
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID', 'RETRYCOUNT', n)
return n
