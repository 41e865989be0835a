-- unclaim.lua: hand back entries the consumer holds but did not start (shutdown).
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] idle (ms),
-- ARGV[4...] entry IDs.
-- Each entry the consumer still owns moves to the consumer 'handed-back'
-- with an idle time of ARGV[3] ms, so that the next XAUTOCLAIM of any worker
-- takes it, and with its delivery count less the delivery that was never
-- run. Moved, it is no longer the consumer's: a lease extension of the
-- consumer sent before the hand-back (lease.lua) cannot take it back, and it
-- does not keep the consumer from being deleted. Returns 0.
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p == 1 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], 'handed-back', 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID', 'RETRYCOUNT', math.max(p[1][4] - 1, 0))
  end
end
return 0
