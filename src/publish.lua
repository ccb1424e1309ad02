#!lua
-- Stores one message in a room and, unless told to leave that to the caller,
-- publishes it, atomically, in one round trip. Because the id is taken and
-- the message published in the same step, live order is history order on
-- every instance. The `#!lua` line makes Redis refuse any key or channel
-- outside the room's slot before the first write, not half-way.
--
-- KEYS[1] the room's meta hash (epoch, head)   KEYS[2] the room's stream
-- KEYS[3] the ref key, when the message has a ref
-- ARGV: user, text, ts, history, ref_ttl_seconds, channel, fresh_epoch,
--       frame_prefix, frame_suffix (the message frame is prefix .. id .. suffix),
--       publish: 'now', or 'later' when the caller first waits for replicas
--       and publishes itself (the channel then stays silent here)
-- Returns {epoch, id, ts, repeat}: repeat is nil for a new message; for a
-- ref seen before it is the stored text, or 'gone' once trimmed (the caller
-- publishes a repeat again when it publishes itself).
--
-- The meta's `safe` is the highest id that may be shown: published here, or
-- by announce.lua once replicas hold it. Reads stop there, so nobody sees a
-- message that a failover could still take back.
local meta, stream, ref_key = KEYS[1], KEYS[2], KEYS[3]
local user, text, ts, history, ref_ttl, channel, fresh_epoch, prefix, suffix, publish =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]

local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  -- A room without an epoch is new, or its history was lost: numbering begins
  -- again at 1 under a new epoch, and any stream left behind is meaningless.
  epoch = fresh_epoch
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', epoch, 'head', 0, 'safe', 0)
end

if ref_key then
  local seen = redis.call('GET', ref_key)
  if seen then
    local seen_epoch, seen_id, seen_ts = string.match(seen, '^(%S+) (%d+) (%d+)$')
    if seen_epoch == epoch then
      local entry = redis.call('XRANGE', stream, seen_id .. '-0', seen_id .. '-0')
      local stored = 'gone'
      if #entry > 0 then
        local fields = entry[1][2]
        for i = 1, #fields, 2 do
          if fields[i] == 'text' then
            stored = fields[i + 1]
          end
        end
      end
      return {epoch, tonumber(seen_id), tonumber(seen_ts), stored}
    end
  end
end

local id = redis.call('HINCRBY', meta, 'head', 1)
redis.call('XADD', stream, 'MAXLEN', history, id .. '-0', 'user', user, 'text', text, 'ts', ts)
if ref_key then
  redis.call('SET', ref_key, epoch .. ' ' .. id .. ' ' .. ts, 'EX', ref_ttl)
end
if publish == 'now' then
  redis.call('HSET', meta, 'safe', id)
  redis.call('SPUBLISH', channel, epoch .. ' ' .. id .. ' ' .. prefix .. id .. suffix)
end
return {epoch, id, tonumber(ts), false}
