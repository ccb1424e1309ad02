#!lua
-- The rules of a room's keys, shared by every script that touches them: this
-- file is put in front of each (append.lua, read.lua, announce.lua, mark.lua)
-- when parlor is built, so each rule is written once. The `#!lua` line makes
-- Redis refuse any key or channel outside the room's slot before the first
-- write, not half-way.
--
-- A room's keys, always KEYS[1] to KEYS[6]:
--   meta    hash: `epoch`, `head` (the last id given), and while events
--           stored for replicas wait to be published, `safe` (the last id
--           that may be shown: published, and on the replicas; reads stop
--           there); with no `safe`, every id up to the head may be shown
--   stream  one entry per event, entry id `<id>-0`, fields `k` (kind: e
--           edit, d delete, r reaction; none for a message), `user`,
--           `text`, `target`, `emoji`, `on`, `ts` and the nonce `n`
--   fold    hash: what later events made of each message in history:
--           `t:<id>` its latest text, `e:<id>` when it was edited, `d:<id>`
--           deleted, `r:<id>` its reactions, lines `emoji \t user`
--   read    hash: each user's read marker
--   refs    hash: the refs of this epoch remembered (see append.lua), each
--           `<length of user>:<user>:<ref>` → `id ts` of the first answer
--   order   stream: one entry per ref in `refs`, in the order remembered,
--           field `f` the ref's field; its entry ids are Redis's clock
local room = {
  meta = KEYS[1], stream = KEYS[2], fold = KEYS[3], read = KEYS[4], refs = KEYS[5], order = KEYS[6],
}

-- The fields of the event under `id` as a table, or nil when history does
-- not have it.
local function entry_of(id)
  local entry = redis.call('XRANGE', room.stream, id .. '-0', id .. '-0')
  if #entry == 0 then
    return nil
  end
  local fields, flat = {}, entry[1][2]
  for i = 1, #flat, 2 do
    fields[flat[i]] = flat[i + 1]
  end
  fields.k = fields.k or 'm'
  return fields, flat
end

-- Whether what a reader saw shows that this store went back (restarted from
-- an older snapshot, lost its tail): `known` holds triples epoch, id, nonce
-- ('' when unknown, or not to be checked) of the highest ids it saw handed
-- out. In this epoch, a head behind one of them, or another event under
-- it, means an id was or would be given twice.
local function went_back(epoch, known)
  local head = nil
  for i = 1, #known, 3 do
    if known[i] == epoch then
      local id = tonumber(known[i + 1])
      head = head or tonumber(redis.call('HGET', room.meta, 'head'))
      if head < id then
        return true
      end
      local nonce = known[i + 2]
      if nonce ~= '' then
        local theirs = entry_of(id)
        if theirs and theirs.n ~= nonce then
          return true
        end
      end
    end
  end
  return false
end

-- The room's epoch now, or nil for a room that has none when `create` is
-- false; and its `safe` mark, false when it has none. A room without an
-- epoch is new, or its history was lost: numbering begins again at 1 under
-- `fresh`, and anything left behind is meaningless. A store that went back
-- moves to `fresh` too, keeping its history: from then on its ids are named
-- by the new epoch. Read markers and refs start afresh with every epoch.
local function current_epoch(fresh, create, known)
  local meta = redis.call('HMGET', room.meta, 'epoch', 'safe')
  local epoch, safe = meta[1], meta[2]
  if not epoch then
    if not create then
      return nil
    end
    redis.call('DEL', room.stream, room.fold, room.read, room.refs, room.order)
    redis.call('HSET', room.meta, 'epoch', fresh, 'head', 0)
    return fresh, false
  end
  if went_back(epoch, known) then
    redis.call('DEL', room.read, room.refs, room.order)
    redis.call('HSET', room.meta, 'epoch', fresh)
    return fresh, safe
  end
  return epoch, safe
end

-- `count` triples of what a reader saw, from ARGV[at] on.
local function known_from(at, count)
  local known = {}
  for i = 1, 3 * count do
    known[i] = ARGV[at + i - 1]
  end
  return known
end

-- The last id that may be shown: the head, or the `safe` mark below it.
local function visible_head()
  local meta = redis.call('HMGET', room.meta, 'head', 'safe')
  local head = tonumber(meta[1] or '0')
  if meta[2] then
    head = math.min(head, tonumber(meta[2]))
  end
  return head
end

-- Keeps the room's keys at least `retention` ms after the last change, and
-- at most a sixteenth of it (a minute at most) longer: each is given
-- retention and that slack, and again only once the meta has less than
-- retention left, so that a busy room pays for its six expiries once per
-- slack, not on every call. A new room's meta has no expiry yet, so it
-- gets them at once; `fresh` says this call may have created another key,
-- and they are all given theirs now.
local function keep(retention, fresh)
  retention = tonumber(retention)
  if not fresh and redis.call('PTTL', room.meta) >= retention then
    return
  end
  local lasting = retention + math.min(math.floor(retention / 16), 60000)
  for _, key in ipairs({room.meta, room.stream, room.fold, room.read, room.refs, room.order}) do
    redis.call('PEXPIRE', key, lasting)
  end
end

