-- Moves a user's read marker up, and when it moved, tells the room's members
-- on every instance, in the same step, so that it is told once.
--
-- KEYS: the room's six keys (see room.lua).
-- ARGV: user, id, channel, payload (a `~origin frame` signal), retention (ms).
-- Returns 'moved', 'unchanged' (the marker was at or beyond it), or
-- 'beyond' (the id is beyond the room's last one).
local user, id, channel, payload, retention = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
if id > visible_head() then
  return 'beyond'
end
if id <= tonumber(redis.call('HGET', room.read, user) or '0') then
  return 'unchanged'
end
redis.call('HSET', room.read, user, id)
redis.call('SPUBLISH', channel, payload)
-- The first marker creates the read hash.
keep(retention, true)
return 'moved'
