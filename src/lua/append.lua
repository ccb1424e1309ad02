-- Stores a batch of events of one room, in order, in one step: each gets the
-- room's next id, and unless the caller publishes after waiting for
-- replicas, is published at once, so live order is history order on every
-- instance.
--
-- KEYS[1] the room's meta hash   KEYS[2] its stream   KEYS[3..] ref keys
-- ARGV: history, ref ttl (s), channel, fresh epoch, 'now' or 'later',
--       retention (ms), k, then k triples of what the caller saw (see
--       went_back), then 7 values per event: user, text, ts, nonce, frame
--       prefix, frame suffix (the frame is prefix .. id .. suffix), and the
--       index in KEYS of its ref key (0 for none).
-- Returns one {epoch, id, ts, repeat, nonce} per event: repeat is false for a
-- new event; for a ref seen before, the stored text, or 'gone' once
-- trimmed (the caller that publishes itself publishes a repeat again).
local meta, stream = KEYS[1], KEYS[2]
local history, ref_ttl, channel, fresh, publish, retention =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local count = tonumber(ARGV[7])
local epoch = current_epoch(meta, stream, fresh, true, known_from(8, count))

-- A ref seen before in this epoch: the answer the first attempt got.
local function repeat_of(ref_key)
  local seen = redis.call('GET', ref_key)
  if not seen then
    return nil
  end
  local seen_epoch, seen_id, seen_ts = string.match(seen, '^(%S+) (%d+) (%d+)$')
  if seen_epoch ~= epoch then
    return nil
  end
  local entry = redis.call('XRANGE', stream, seen_id .. '-0', seen_id .. '-0')
  local text, nonce = 'gone', false
  if #entry > 0 then
    local fields = entry[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 'text' then
        text = fields[i + 1]
      elseif fields[i] == 'n' then
        nonce = fields[i + 1]
      end
    end
  end
  return {epoch, tonumber(seen_id), tonumber(seen_ts), text, nonce}
end

local results = {}
local at = 8 + 3 * count
while at <= #ARGV do
  local user, text, ts, nonce, prefix, suffix = ARGV[at], ARGV[at + 1], ARGV[at + 2],
    ARGV[at + 3], ARGV[at + 4], ARGV[at + 5]
  local ref_key = KEYS[tonumber(ARGV[at + 6])]
  at = at + 7
  local seen = ref_key and repeat_of(ref_key)
  if seen then
    results[#results + 1] = seen
  else
    local id = redis.call('HINCRBY', meta, 'head', 1)
    redis.call('XADD', stream, 'MAXLEN', history, id .. '-0',
      'user', user, 'text', text, 'ts', ts, 'n', nonce)
    if ref_key then
      redis.call('SET', ref_key, epoch .. ' ' .. id .. ' ' .. ts, 'EX', ref_ttl)
    end
    if publish == 'now' then
      redis.call('HSET', meta, 'safe', id)
      redis.call('SPUBLISH', channel, epoch .. ' ' .. id .. ' ' .. nonce .. ' ' .. prefix .. id .. suffix)
    end
    results[#results + 1] = {epoch, id, tonumber(ts), false, nonce}
  end
end
touch(retention, {meta, stream})
return results
