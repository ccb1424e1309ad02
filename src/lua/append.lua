-- Stores a batch of events of one room, in order, in one step: each gets the
-- room's next id, and unless the caller publishes after waiting for
-- replicas, is published at once, so live order is history order on every
-- instance. An edit, delete or reaction is checked against the message it
-- targets in the same step, so two instances racing on one message cannot
-- both win.
--
-- A ref is remembered in the room's `refs` hash, with the first answer,
-- for at least `ref memory` ms by Redis's clock: a call that hands out the
-- room's 16th id after the last that did (or remembers a ref without an
-- id) then forgets, oldest first, the refs remembered longer ago (see
-- forget_old_refs). The hash holds the refs of that window and of the
-- room's last few calls before, not one key per ref, and goes with the
-- room's other keys after `retention` (see keep).
--
-- KEYS: the room's six keys (see room.lua).
-- ARGV: history, ref memory (ms), channel, fresh epoch, 'now' or 'later',
--       retention (ms), k, then k triples of what the caller saw (see
--       went_back), then 11 values per event: kind (m, e, d, r or u for a
--       reaction taken back), user, text, target, emoji, '1' when the user
--       is a moderator, ts, nonce, frame prefix, frame suffix (the frame is
--       prefix .. id .. suffix), and its ref's field in `refs` ('' for
--       none).
-- Returns one {epoch, id, ts, repeat, nonce, refusal} per event: id is false
-- for a reaction that changed nothing; repeat is false for a new event, and
-- for a ref seen before the stored event's fields (or 'gone' once trimmed),
-- which a caller that publishes itself publishes again; refusal is
-- 'not_found' or 'forbidden' for an event the rules refuse.
local history, ref_memory, channel, fresh, publish, retention =
  tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local count = tonumber(ARGV[7])
local epoch, safe = current_epoch(fresh, true, known_from(8, count))

-- Refs forgotten in one step while younger ones remain.
local FORGET_AT_ONCE = 1000
-- How many ids a room hands out between two steps of forgetting.
local FORGET_EVERY = 16

-- Forgets the refs remembered `ref_memory` ms ago or longer, oldest first:
-- all of them when none younger is left (a room busy once, quiet since),
-- else up to FORGET_AT_ONCE, so that a room's later calls catch up.
local function forget_old_refs()
  local clock = redis.call('TIME')
  local cutoff = string.format('%d', tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) - ref_memory)
  local old = redis.call('XRANGE', room.order, '-', cutoff, 'COUNT', FORGET_AT_ONCE)
  if #old == 0 then
    return
  end
  if #old == FORGET_AT_ONCE then
    local newest = redis.call('XREVRANGE', room.order, '+', '-', 'COUNT', 1)
    if tonumber(string.match(newest[1][1], '^(%d+)')) <= tonumber(cutoff) then
      redis.call('UNLINK', room.refs, room.order)
      return
    end
  end
  local fields = {}
  for i, entry in ipairs(old) do
    fields[i] = entry[2][2]
  end
  redis.call('HDEL', room.refs, unpack(fields))
  local ms, seq = string.match(old[#old][1], '^(%d+)-(%d+)$')
  redis.call('XTRIM', room.order, 'MINID', ms .. '-' .. string.format('%d', tonumber(seq) + 1))
end

-- Whether this call may have created a key of the room, which then has no
-- expiry yet (see keep): the stream, the refs hash, or the fold, which goes
-- when its last field does.
local created = false

-- Remembers a ref with the answer it got. The hash's `~` field is never
-- forgotten: when it is new, so is the hash.
local function remember(field, id, ts)
  if redis.call('HSET', room.refs, field, id .. ' ' .. ts, '~', '') == 2 then
    created = true
  end
  redis.call('XADD', room.order, '*', 'f', field)
end

-- A ref seen before in this epoch: the answer the first attempt got.
local function repeat_of(field)
  local seen = redis.call('HGET', room.refs, field)
  if not seen then
    return nil
  end
  local seen_id, seen_ts = string.match(seen, '^(%d+) (%d+)$')
  if seen_id == '0' then
    return {epoch, false, tonumber(seen_ts), false, false, false}
  end
  local fields, flat = entry_of(seen_id)
  return {epoch, tonumber(seen_id), tonumber(seen_ts), flat or 'gone', fields and fields.n or false, false}
end

-- The reactions of a message, as lines, and whether `line` is one of them.
local function reactions(target, line)
  local lines = redis.call('HGET', room.fold, 'r:' .. target) or ''
  return lines, string.find('\n' .. lines .. '\n', '\n' .. line .. '\n', 1, true) ~= nil
end

-- Checks an event against the message it targets: nil when it may be
-- stored, 'unchanged' for a reaction that changes nothing, or the refusal.
local function check(kind, user, target, emoji, moderator)
  if kind == 'm' then
    return nil
  end
  local message = entry_of(target)
  if not message or message.k ~= 'm' or redis.call('HEXISTS', room.fold, 'd:' .. target) == 1 then
    return 'not_found'
  end
  local own = message.user == user
  if kind == 'e' and not own then
    return 'forbidden'
  end
  if kind == 'd' and not own and moderator ~= '1' then
    return 'forbidden'
  end
  if kind == 'r' or kind == 'u' then
    local _, has = reactions(target, emoji .. '\t' .. user)
    if has == (kind == 'r') then
      return 'unchanged'
    end
  end
  return nil
end

-- What an event makes of the message it targets.
local function fold(kind, user, text, target, emoji, ts)
  created = created or kind ~= 'm'
  if kind == 'e' then
    redis.call('HSET', room.fold, 't:' .. target, text, 'e:' .. target, ts)
  elseif kind == 'd' then
    redis.call('HSET', room.fold, 'd:' .. target, '1')
  elseif kind == 'r' or kind == 'u' then
    local line = emoji .. '\t' .. user
    local lines = reactions(target, line)
    local kept = {}
    for each in string.gmatch(lines, '[^\n]+') do
      if each ~= line then
        kept[#kept + 1] = each
      end
    end
    if kind == 'r' then
      kept[#kept + 1] = line
    end
    if #kept == 0 then
      redis.call('HDEL', room.fold, 'r:' .. target)
    else
      redis.call('HSET', room.fold, 'r:' .. target, table.concat(kept, '\n'))
    end
  end
end

-- What was made of the message under `id`, which leaves history.
local function forget_fold(id)
  redis.call('HDEL', room.fold, 't:' .. id, 'e:' .. id, 'd:' .. id, 'r:' .. id)
end

-- Makes room for event `id`: history keeps `history` entries, and what was
-- made of a message leaves with it.
local function trim(id)
  if id <= history then
    -- The stream holds ids below this one only: fewer than `history`.
    return
  end
  local over = redis.call('XLEN', room.stream) - history + 1
  if over == 1 then
    -- Ids are given one after another: the oldest is `history` below.
    forget_fold(id - history)
  elseif over > 1 then
    for _, entry in ipairs(redis.call('XRANGE', room.stream, '-', '+', 'COUNT', over)) do
      forget_fold(string.match(entry[1], '^(%d+)'))
    end
  end
end

-- Stores one event; returns its answer.
local function store(kind, user, text, target, emoji, ts, nonce, prefix, suffix)
  local id = redis.call('HINCRBY', room.meta, 'head', 1)
  -- The stream begins with its epoch's first event.
  created = created or id == 1
  trim(id)
  local fields = {'user', user, 'ts', ts, 'n', nonce}
  if kind ~= 'm' then
    table.insert(fields, 'k')
    table.insert(fields, kind == 'u' and 'r' or kind)
  end
  if kind == 'm' or kind == 'e' then
    table.insert(fields, 'text')
    table.insert(fields, text)
  end
  if kind ~= 'm' then
    table.insert(fields, 'target')
    table.insert(fields, target)
  end
  if kind == 'r' or kind == 'u' then
    table.insert(fields, 'emoji')
    table.insert(fields, emoji)
    table.insert(fields, 'on')
    table.insert(fields, kind == 'r' and '1' or '0')
  end
  redis.call('XADD', room.stream, 'MAXLEN', history, id .. '-0', unpack(fields))
  fold(kind, user, text, target, emoji, ts)
  if publish == 'now' then
    redis.call('SPUBLISH', channel, epoch .. ' ' .. id .. ' ' .. nonce .. ' ' .. prefix .. id .. suffix)
  end
  return id
end

local results = {}
-- The ids handed out, and whether a ref without one was remembered.
local first, last, idless = nil, nil, false
local at = 8 + 3 * count
while at <= #ARGV do
  local kind, user, text, target, emoji, moderator, ts, nonce, prefix, suffix =
    ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], ARGV[at + 5],
    ARGV[at + 6], ARGV[at + 7], ARGV[at + 8], ARGV[at + 9]
  local field = ARGV[at + 10]
  at = at + 11
  local seen = field ~= '' and repeat_of(field)
  if seen then
    results[#results + 1] = seen
  else
    local refusal = check(kind, user, target, emoji, moderator)
    if refusal == 'not_found' or refusal == 'forbidden' then
      results[#results + 1] = {epoch, false, tonumber(ts), false, false, refusal}
    else
      local id = 0
      if refusal ~= 'unchanged' then
        id = store(kind, user, text, target, emoji, ts, nonce, prefix, suffix)
      end
      if field ~= '' then
        remember(field, id, ts)
        idless = idless or id == 0
      end
      if id > 0 then
        first, last = first or id, id
      end
      results[#results + 1] = {epoch, id > 0 and id or false, tonumber(ts), false, id > 0 and nonce or false, false}
    end
  end
end
if last and publish == 'now' then
  -- Every id up to the head is published: none is held back any more.
  if safe then
    redis.call('HDEL', room.meta, 'safe')
  end
elseif last and not safe then
  -- Reads stop below this call's events until announce.lua publishes them.
  redis.call('HSET', room.meta, 'safe', first - 1)
end
if idless or (last and math.floor(last / FORGET_EVERY) > math.floor((first - 1) / FORGET_EVERY)) then
  forget_old_refs()
end
keep(retention, created)
return results
