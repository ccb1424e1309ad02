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
-- entries is one string, a JSON array (cjson's) of the entries oldest
-- first, each [stream id, [field, value, ...], fold], where fold (for a
-- message that later events changed, when asked) is [latest text, edited
-- ts, deleted, [emoji, user, ...]], '' for each one that is not so (cjson
-- writes an empty list of reactions as {}). Redis builds one string of a
-- thousand entries in about three quarters of the time a nested reply of
-- them takes, and the reader parses it in one pass instead of some 12,000
-- reply values.
local after, before, limit, from, fresh = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local create, retention, folding, marker_of = ARGV[6] == '1', ARGV[7], ARGV[8] == '1', ARGV[9]

-- The entries as the one JSON string returned; cjson would write none as {}.
local function encoded(entries)
  if #entries == 0 then
    return '[]'
  end
  return cjson.encode(entries)
end

local epoch = current_epoch(fresh, create, known_from(11, tonumber(ARGV[10])))
if not epoch then
  return {fresh, 0, 1, '[]', false, 0}
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

-- Messages whose fold one HMGET reads: four fields each, well within what
-- Lua can unpack into one call.
local FOLDS_AT_ONCE = 500

-- What later events made of a message, from its four fold fields: its
-- latest text, edit time, deleted flag and reactions.
local function fold_from(t, e, d, r)
  local reacted = {}
  for emoji, user in string.gmatch(r or '', '([^\t\n]+)\t([^\n]+)') do
    reacted[#reacted + 1] = emoji
    reacted[#reacted + 1] = user
  end
  return {t or '', e or '', d or '', reacted}
end

-- The fold of each message among the entries that later events changed (by
-- position), read a few hundred messages a call rather than one call each.
local function folds_of(messages)
  local folds = {}
  for from = 1, #messages, FOLDS_AT_ONCE do
    local fields = {}
    local to = math.min(from + FOLDS_AT_ONCE - 1, #messages)
    for i = from, to do
      local id = messages[i][2]
      fields[#fields + 1] = 't:' .. id
      fields[#fields + 1] = 'e:' .. id
      fields[#fields + 1] = 'd:' .. id
      fields[#fields + 1] = 'r:' .. id
    end
    local values = redis.call('HMGET', room.fold, unpack(fields))
    for i = from, to do
      local at = 4 * (i - from)
      local t, e, d, r = values[at + 1], values[at + 2], values[at + 3], values[at + 4]
      -- A message nothing changed has no fold: '' says so in fewer bytes.
      if t or e or d or r then
        folds[messages[i][1]] = fold_from(t, e, d, r)
      end
    end
  end
  return folds
end

-- The messages among the entries (events of other kinds have no fold), as
-- {position, id}.
local messages = {}
-- A room where no message was edited, deleted or reacted to has no fold.
if folding and redis.call('EXISTS', room.fold) == 1 then
  for i, entry in ipairs(entries) do
    local kind = 'm'
    for j = 1, #entry[2], 2 do
      if entry[2][j] == 'k' then
        kind = entry[2][j + 1]
      end
    end
    if kind == 'm' then
      messages[#messages + 1] = {i, string.match(entry[1], '^(%d+)')}
    end
  end
end
local folds = folds_of(messages)
for i, entry in ipairs(entries) do
  entry[3] = folds[i] or ''
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
return {epoch, head, first, encoded(entries), head_nonce, marker}
