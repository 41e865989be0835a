-- runsgc.lua: delete the runs recorded for entries no longer pending.
-- KEYS[1] stream, KEYS[2] the group's runs hash (<stream>:runs:<group>);
-- ARGV[1] group, ARGV[2] HSCAN cursor ('0' to start), ARGV[3] HSCAN COUNT.
-- Takes one HSCAN batch of the hash's fields (entry IDs) and deletes each
-- whose entry is not pending in the group, whoever acknowledged it (any
-- worker, of any kind), dead-lettered or deleted it; the field of an entry
-- still pending stays, whoever holds it. No group or no stream: nothing is
-- pending. Returns {next cursor, fields deleted}; cursor '0': the walk over
-- the hash is complete.
local r = redis.call('HSCAN', KEYS[2], ARGV[2], 'COUNT', tonumber(ARGV[3]))
local gone = {}
for i = 1, #r[2], 2 do
  local id = r[2][i]
  local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if not ok or #p == 0 then gone[#gone + 1] = id end
end
if #gone > 0 then redis.call('HDEL', KEYS[2], unpack(gone)) end
return {r[1], #gone}
