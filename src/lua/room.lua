#!lua
-- The rules of a room's keys, shared by every script that touches them: this
-- file is put in front of each (append.lua, read.lua, announce.lua) when
-- parlor is built, so each rule is written once. The `#!lua` line makes
-- Redis refuse any key or channel outside the room's slot before the first
-- write, not half-way.
--
-- A room's meta hash holds `epoch`, `head` (the last id given) and `safe`
-- (the last id that may be shown: published, and on the replicas when the
-- master has any; reads stop there). Its stream holds one entry per event,
-- entry id `<id>-0`, with the event's fields and its nonce `n`.

-- The nonce of the event under `id`, or nil when history does not have it.
local function nonce_of(stream, id)
  local entry = redis.call('XRANGE', stream, id .. '-0', id .. '-0')
  if #entry == 0 then
    return nil
  end
  local fields = entry[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'n' then
      return fields[i + 1]
    end
  end
  return nil
end

-- Whether what a reader saw shows that this store went back (restarted from
-- an older snapshot, lost its tail): `known` holds triples epoch, id, nonce
-- ('' when unknown, or not to be checked) of the highest ids it saw handed
-- out. In this epoch, a head behind one of them, or another event under
-- it, means an id was or would be given twice.
local function went_back(meta, stream, epoch, known)
  local head = nil
  for i = 1, #known, 3 do
    if known[i] == epoch then
      local id = tonumber(known[i + 1])
      head = head or tonumber(redis.call('HGET', meta, 'head'))
      if head < id then
        return true
      end
      local nonce = known[i + 2]
      if nonce ~= '' then
        local theirs = nonce_of(stream, id)
        if theirs and theirs ~= nonce then
          return true
        end
      end
    end
  end
  return false
end

-- The room's epoch now, or nil for a room that has none when `create` is
-- false. A room without an epoch is new, or its history was lost: numbering
-- begins again at 1 under `fresh`, and any stream left behind is
-- meaningless. A store that went back moves to `fresh` too, keeping its
-- history: from then on its ids are named by the new epoch.
local function current_epoch(meta, stream, fresh, create, known)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    if not create then
      return nil
    end
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', fresh, 'head', 0, 'safe', 0)
    return fresh
  end
  if went_back(meta, stream, epoch, known) then
    redis.call('HSET', meta, 'epoch', fresh)
    return fresh
  end
  return epoch
end

-- `count` triples of what a reader saw, from ARGV[at] on.
local function known_from(at, count)
  local known = {}
  for i = 1, 3 * count do
    known[i] = ARGV[at + i - 1]
  end
  return known
end

-- Keeps the room's keys `retention` ms after the last change.
local function touch(retention, keys)
  for _, key in ipairs(keys) do
    redis.call('PEXPIRE', key, retention)
  end
end

