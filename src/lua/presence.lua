#!lua
-- Who is in a room, across instances: a sorted set per room whose members
-- are `user \n instance` and whose scores are expiry times (ms), and a hash
-- counting each user's entries in it. An instance that dies stops refreshing
-- its entries; a sweep on any other instance then removes them. A user is
-- present while it has an entry; `member` frames are published when that
-- changes, by whoever changed it, once. Every operation costs O(log N) per
-- entry it touches, however many users the room has.
--
-- KEYS[1] the room's presence set, KEYS[2] its counts
-- ARGV: op ('join', 'leave' or 'beat'), now (ms), expiry (ms), key ttl (ms),
--       channel, frame prefix, instance, then the users: one for join and
--       leave; for beat, those of this instance to refresh before the sweep.
-- A member frame is prefix .. json(user) .. ',"event":"join"}' (or "leave").
local key, counts = KEYS[1], KEYS[2]
local op, now, expiry, key_ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local channel, prefix = ARGV[5], ARGV[6]
-- Expired entries a sweep removes at most, so that no call runs long; the
-- next sweep takes the rest.
local SWEEP_BATCH = 500

local function announce(user, event)
  local frame = prefix .. cjson.encode(user) .. ',"event":"' .. event .. '"}'
  redis.call('SPUBLISH', channel, '~- ' .. frame)
end

-- Removes `entry` of `user`; announces the leave when it was the last.
local function remove(entry, user)
  if redis.call('ZREM', key, entry) == 1 then
    if redis.call('HINCRBY', counts, user, -1) <= 0 then
      redis.call('HDEL', counts, user)
      announce(user, 'leave')
    end
  end
end

-- Adds or refreshes `user`'s entry of this instance; announces the join
-- when it is the user's first.
local function refresh(user, instance)
  if redis.call('ZADD', key, expiry, user .. '\n' .. instance) == 1 then
    if redis.call('HINCRBY', counts, user, 1) == 1 then
      announce(user, 'join')
    end
  end
end

local instance = ARGV[7]
if op == 'join' or op == 'beat' then
  for i = 8, #ARGV do
    refresh(ARGV[i], instance)
  end
  redis.call('PEXPIRE', key, key_ttl)
  redis.call('PEXPIRE', counts, key_ttl)
end
if op == 'leave' then
  remove(ARGV[8] .. '\n' .. instance, ARGV[8])
elseif op == 'beat' then
  local expired = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, SWEEP_BATCH)
  for _, entry in ipairs(expired) do
    remove(entry, string.match(entry, '^(.*)\n'))
  end
end
return 1
