-- Publishes events that append.lua stored without publishing, once the
-- caller's WAIT said replicas hold them, and moves the room's `safe` mark up
-- to the highest: replication keeps the master's order, so every id below it
-- is held by the replicas too. A room without the mark shows every id.
--
-- KEYS[1] the room's meta hash
-- ARGV: epoch, channel, then pairs of id and payload.
-- Returns 1, or 0 when the room's epoch changed meanwhile (nothing is
-- published then: the ids belong to an epoch that is gone).
local meta = KEYS[1]
local epoch, channel = ARGV[1], ARGV[2]
if redis.call('HGET', meta, 'epoch') ~= epoch then
  return 0
end
-- No mark: a publishing append showed every id since.
local safe = redis.call('HGET', meta, 'safe')
local highest = tonumber(safe or '0')
for i = 3, #ARGV, 2 do
  local id = tonumber(ARGV[i])
  if id > highest then
    highest = id
  end
  redis.call('SPUBLISH', channel, ARGV[i + 1])
end
if safe then
  redis.call('HSET', meta, 'safe', highest)
end
return 1
