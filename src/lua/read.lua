-- Reads part of a room's history, with where it stands: one round trip, one
-- consistent view. Nothing above the meta's `safe` mark is shown: the head
-- reported is the last id that may be seen.
--
-- KEYS[1] the room's meta hash   KEYS[2] its stream
-- ARGV: after (ids strictly above), before (strictly below, or '+' for none),
--       limit, 'oldest' or 'newest' (which end the limit counts from),
--       fresh epoch, '1' to give a room without one its epoch now ('0': a
--       client's read, which changes nothing), retention (ms), k, then k
--       triples of what the reader saw (see went_back).
-- Returns {epoch, head, first, entries, head nonce or false}; entries oldest
-- first, each {stream id, {field, value, ...}}.
local meta, stream = KEYS[1], KEYS[2]
local after, before, limit, from, fresh = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local create, retention = ARGV[6] == '1', ARGV[7]

local epoch = current_epoch(meta, stream, fresh, create, known_from(9, tonumber(ARGV[8])))
if not epoch then
  return {fresh, 0, 1, {}, false}
end
if create then
  touch(retention, {meta, stream})
end
local head = tonumber(redis.call('HGET', meta, 'head'))
local safe = redis.call('HGET', meta, 'safe')
if safe then
  head = math.min(head, tonumber(safe))
end

local first = head + 1
local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
if #oldest > 0 then
  first = math.min(tonumber(string.match(oldest[1][1], '^(%d+)')), head + 1)
end

local entries = {}
if limit > 0 then
  local lo = '(' .. after .. '-0'
  local below = head + 1
  if before ~= '+' then
    below = math.min(below, tonumber(before))
  end
  local hi = '(' .. below .. '-0'
  if from == 'oldest' then
    entries = redis.call('XRANGE', stream, lo, hi, 'COUNT', limit)
  else
    local newest = redis.call('XREVRANGE', stream, hi, lo, 'COUNT', limit)
    for i = #newest, 1, -1 do
      entries[#entries + 1] = newest[i]
    end
  end
end
return {epoch, head, first, entries, head > 0 and nonce_of(stream, head) or false}
