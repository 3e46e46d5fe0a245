-- replhub: helpers shared by every script (prepended to each one).
--
-- digest(key, type) is the identity of a key's value, computed the same way
-- on both sides, so states can be compared without moving the data:
-- 16 hex characters, "-" for a missing key or a type replhub does not copy.
-- Lists hash in order; hashes, sets and sorted sets combine per-element
-- hashes with XOR, so their digest does not depend on the server's internal
-- order (encodings and locales differ between servers).
local function digest(key, t)
  if t == 'string' then
    return string.sub(redis.sha1hex('s' .. redis.call('GET', key)), 1, 16)
  elseif t == 'list' then
    local n = redis.call('LLEN', key)
    local h = 'l' .. n
    local i = 0
    while i < n do
      local parts = {h}
      for _, v in ipairs(redis.call('LRANGE', key, i, i + 999)) do
        parts[#parts + 1] = #v .. ':' .. v
      end
      h = redis.sha1hex(table.concat(parts, ','))
      i = i + 1000
    end
    return string.sub(redis.sha1hex(h), 1, 16)
  end
  local items, pairs_of
  if t == 'hash' then
    items, pairs_of = redis.call('HGETALL', key), true
  elseif t == 'set' then
    items, pairs_of = redis.call('SMEMBERS', key), false
  elseif t == 'zset' then
    items, pairs_of = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES'), true
  else
    return '-'
  end
  local a, b = 0, 0
  local step = pairs_of and 2 or 1
  for i = 1, #items, step do
    local element = items[i]
    if pairs_of then
      element = #items[i] .. ':' .. items[i] .. items[i + 1]
    end
    local h = redis.sha1hex(element)
    a = bit.bxor(a, tonumber(string.sub(h, 1, 8), 16))
    b = bit.bxor(b, tonumber(string.sub(h, 9, 16), 16))
  end
  return string.sub(redis.sha1hex(t .. #items .. ':' .. bit.tohex(a, 8) .. bit.tohex(b, 8)), 1, 16)
end

local function type_of(key)
  return redis.call('TYPE', key)['ok']
end

-- The resync bucket (0..63) of a key, by its name only, so both sides agree.
local function bucket_of(key)
  return tonumber(string.sub(redis.sha1hex(key), 1, 2), 16) % 64
end
