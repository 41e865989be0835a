-- lease.lua: extend the lease of entries the consumer still owns.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3...] entry IDs.
-- Resets the idle time of each entry still pending under the consumer, keeping
-- its delivery count, and returns the IDs the consumer no longer owns.
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
