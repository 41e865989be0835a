-- reclaim.lua: XAUTOCLAIM that also returns the delivery count of each entry.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle (ms),
-- ARGV[4] cursor, ARGV[5] count, ARGV[6...] IDs the consumer still holds.
-- Returns {next cursor, entries, counts}. An entry the consumer still holds
-- (running, queued or waiting for a retry) is not returned: XAUTOCLAIM just
-- reset its idle time, which is a lease extension, and its delivery count is
-- put back to what it was, since nothing new was delivered.
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
