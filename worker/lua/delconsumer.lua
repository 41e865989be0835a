-- delconsumer.lua: delete a consumer only if it has nothing pending.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer.
-- XGROUP DELCONSUMER drops the consumer's pending entries and the ingest's
-- commit would pass them. Returns -1 when the consumer still has pending
-- entries, else what XGROUP DELCONSUMER returns (0).
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
