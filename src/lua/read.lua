-- Reads part of a room's history, with where it stands: one round trip, one
-- consistent view. Nothing above the meta's `safe` mark is shown: the head
-- reported is the last id that may be seen.
--
-- KEYS: the room's six keys (see room.lua).
-- ARGV: after (ids strictly above), before (strictly below, or '+' for none),
--       limit, 'oldest' or 'newest' (which end the limit counts from),
--       fresh epoch, '1' to give a room without one its epoch now ('0': a
--       client's read, which changes nothing), retention (ms), '1' to fold,
--       the user whose read marker to give ('' for none), k, then k triples
--       of what the reader saw (see went_back).
-- Returns {epoch, head, first, entries, head nonce or false, marker};
-- entries oldest first, each {stream id, {field, value, ...}, fold}, where
-- fold (for a message, when asked) is {latest text, edited ts, deleted,
-- {emoji, user, ...}}, '' for each one that is not so.
local after, before, limit, from, fresh = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local create, retention, folding, marker_of = ARGV[6] == '1', ARGV[7], ARGV[8] == '1', ARGV[9]

local epoch = current_epoch(fresh, create, known_from(11, tonumber(ARGV[10])))
if not epoch then
  return {fresh, 0, 1, {}, false, 0}
end
if create then
  keep(retention, false)
end
local head = visible_head()

local first = head + 1
local oldest = redis.call('XRANGE', room.stream, '-', '+', 'COUNT', 1)
if #oldest > 0 then
  first = math.min(tonumber(string.match(oldest[1][1], '^(%d+)')), head + 1)
end

local entries = {}
local below = head + 1
if before ~= '+' then
  below = math.min(below, tonumber(before))
end
-- An empty range (nothing between after and below) reads nothing: Redis
-- refuses an exclusive range that ends below its start.
if limit > 0 and below > tonumber(after) + 1 then
  local lo = '(' .. after .. '-0'
  local hi = '(' .. below .. '-0'
  if from == 'oldest' then
    entries = redis.call('XRANGE', room.stream, lo, hi, 'COUNT', limit)
  else
    local newest = redis.call('XREVRANGE', room.stream, hi, lo, 'COUNT', limit)
    for i = #newest, 1, -1 do
      entries[#entries + 1] = newest[i]
    end
  end
end

-- What later events made of a message: its latest text, edit time, deleted
-- flag and reactions.
local function fold_of(id)
  local t, e, d, r = unpack(redis.call('HMGET', room.fold, 't:' .. id, 'e:' .. id, 'd:' .. id, 'r:' .. id))
  local reacted = {}
  for emoji, user in string.gmatch(r or '', '([^\t\n]+)\t([^\n]+)') do
    reacted[#reacted + 1] = emoji
    reacted[#reacted + 1] = user
  end
  return {t or '', e or '', d or '', reacted}
end

for i, entry in ipairs(entries) do
  local fold = ''
  if folding then
    local kind = 'm'
    for j = 1, #entry[2], 2 do
      if entry[2][j] == 'k' then
        kind = entry[2][j + 1]
      end
    end
    if kind == 'm' then
      fold = fold_of(string.match(entry[1], '^(%d+)'))
    end
  end
  entries[i] = {entry[1], entry[2], fold}
end

local head_nonce = false
if head > 0 then
  local fields = entry_of(head)
  head_nonce = fields and fields.n or false
end
local marker = 0
if marker_of ~= '' then
  marker = tonumber(redis.call('HGET', room.read, marker_of) or '0')
end
return {epoch, head, first, entries, head_nonce, marker}
