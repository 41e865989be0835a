-- replay.lua: move one dead letter to the replay stream, both or neither.
-- KEYS[1] dead-letter stream, KEYS[2] replay stream; ARGV[1] dead letter ID.
-- XADD to the replay stream with all its fields, then XDEL from the
-- dead-letter stream. Returns 0 if the dead letter is gone, 1 when moved.
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(e[1][2]))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
