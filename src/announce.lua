#!lua
-- Publishes a message that publish.lua stored without publishing, once the
-- caller's WAIT said replicas hold it, and moves the room's `safe` mark up to
-- it: replication keeps the master's order, so every id below it is held by
-- the replicas too.
--
-- KEYS[1] the room's meta hash
-- ARGV: epoch, id, channel, payload
-- Returns 1, or 0 when the room's history began again meanwhile (nothing is
-- published then: the id belongs to a lost epoch).
local meta = KEYS[1]
local epoch, id, channel, payload = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
if redis.call('HGET', meta, 'epoch') ~= epoch then
  return 0
end
local safe = tonumber(redis.call('HGET', meta, 'safe') or '0')
if id > safe then
  redis.call('HSET', meta, 'safe', id)
end
redis.call('SPUBLISH', channel, payload)
return 1
