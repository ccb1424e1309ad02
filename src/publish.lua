-- Stores one message in a room and publishes it, atomically, in one round trip.
-- Because the id is taken and the message published in the same step, live
-- order is history order on every instance.
--
-- KEYS[1] the room's meta hash (epoch, head)   KEYS[2] the room's stream
-- KEYS[3] the ref key, when the message has a ref
-- ARGV: user, text, ts, history, ref_ttl_seconds, channel, fresh_epoch,
--       frame_prefix, frame_suffix (the message frame is prefix .. id .. suffix)
-- Returns {epoch, id, ts}.
local meta, stream, ref_key = KEYS[1], KEYS[2], KEYS[3]
local user, text, ts, history, ref_ttl, channel, fresh_epoch, prefix, suffix =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]

local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  -- A room without an epoch is new, or its history was lost: numbering begins
  -- again at 1 under a new epoch, and any stream left behind is meaningless.
  epoch = fresh_epoch
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', epoch, 'head', 0)
end

if ref_key then
  local seen = redis.call('GET', ref_key)
  if seen then
    local seen_epoch, seen_id, seen_ts = string.match(seen, '^(%S+) (%d+) (%d+)$')
    if seen_epoch == epoch then
      return {epoch, tonumber(seen_id), tonumber(seen_ts)}
    end
  end
end

local id = redis.call('HINCRBY', meta, 'head', 1)
redis.call('XADD', stream, 'MAXLEN', history, id .. '-0', 'user', user, 'text', text, 'ts', ts)
if ref_key then
  redis.call('SET', ref_key, epoch .. ' ' .. id .. ' ' .. ts, 'EX', ref_ttl)
end
redis.call('PUBLISH', channel, epoch .. ' ' .. id .. ' ' .. prefix .. id .. suffix)
return {epoch, id, tonumber(ts)}
