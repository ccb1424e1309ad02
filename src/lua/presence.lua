#!lua
-- Who is in a room, across instances: one sorted set per room whose members
-- are `user \n instance` and whose scores are expiry times (ms). An instance
-- that dies stops refreshing its entries; a sweep on any other instance then
-- removes them. A user is present while any of its entries is live; `member`
-- frames are published when that changes, by whoever changed it, once.
--
-- KEYS[1] the room's presence set
-- ARGV: op ('join', 'leave' or 'sweep'), now (ms), expiry (ms), key ttl (ms),
--       channel, frame prefix, and for join and leave: user, instance.
-- A member frame is prefix .. json(user) .. ',"event":"join"}' (or "leave").
local key = KEYS[1]
local op, now, expiry, key_ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local channel, prefix = ARGV[5], ARGV[6]

local function user_of(entry)
  return string.match(entry, '^(.*)\n')
end

-- Whether `user` has a live entry other than `except`.
local function present(user, except)
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', key, '(' .. now, '+inf')) do
    if entry ~= except and user_of(entry) == user then
      return true
    end
  end
  return false
end

local function announce(user, event)
  local frame = prefix .. cjson.encode(user) .. ',"event":"' .. event .. '"}'
  redis.call('SPUBLISH', channel, '~- ' .. frame)
end

if op == 'join' then
  local user, instance = ARGV[7], ARGV[8]
  local entry = user .. '\n' .. instance
  local was = present(user, nil)
  redis.call('ZADD', key, expiry, entry)
  redis.call('PEXPIRE', key, key_ttl)
  if not was then
    announce(user, 'join')
  end
elseif op == 'leave' then
  local user, instance = ARGV[7], ARGV[8]
  local entry = user .. '\n' .. instance
  if redis.call('ZREM', key, entry) == 1 and not present(user, entry) then
    announce(user, 'leave')
  end
elseif op == 'sweep' then
  local gone = {}
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', now)) do
    redis.call('ZREM', key, entry)
    gone[user_of(entry)] = true
  end
  for user in pairs(gone) do
    if not present(user, nil) then
      announce(user, 'leave')
    end
  end
end
return 1
