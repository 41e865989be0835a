-- deadletter.lua: append a dead letter and acknowledge the entry, both or neither.
-- KEYS[1] stream, KEYS[2] dead-letter stream, KEYS[3] (optional) the stream's
-- runs hash of the group (<stream>:runs:<group>), whose field for the entry is
-- deleted; ARGV[1] group, ARGV[2]
-- consumer, ARGV[3] entry ID, ARGV[4...] the dead letter's field/value pairs.
-- Does nothing and returns 0 unless the entry is pending under the consumer
-- (somebody acknowledged or dead-lettered it already, or another worker
-- reclaimed it and is running it now); returns 1 when done.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #p == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
if KEYS[3] then redis.call('HDEL', KEYS[3], ARGV[3]) end
return 1
