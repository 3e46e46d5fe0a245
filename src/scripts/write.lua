-- replhub write: replace or delete each key in KEYS atomically.
--
-- ARGV[1]: the types the link replicates, as ",string,hash,".
-- Then one record per key, in KEYS order:
--   op ('put' | 'del' | 'stage'), expect, new_digest, type, pttl, n, n items
-- expect '' means an unconditional write (push and pull links). Otherwise the
-- write is a compare-and-set (both links): it happens only if the key's
-- current digest is `expect` (the state last known equal on both sides) or
-- already `new_digest`. A key of a type the link does not replicate is never
-- touched.
--
-- A put builds the value in a scratch key under __replhub__: and RENAMEs it
-- over the key, so every write causes exactly one keyspace event on the key
-- (rename_to) whatever its type and TTL; a del causes one (del) when the key
-- existed. The echo filter of `both` links counts on that (unconditional
-- string puts, whose events nobody counts, are a plain SET instead). A
-- 'stage' put renames a key that earlier requests filled chunk by chunk
-- (items[1] names it).
--
-- Returns per key: status ('ok' | 'same' | 'conflict' | 'skip' | 'missing'),
-- a digest ('conflict': the current one) or the type found ('skip'), and the
-- number of keyspace events caused on the key.
local allowed = ARGV[1]
local scratch = '__replhub__:scratch'
local commands = {hash = 'HSET', list = 'RPUSH', set = 'SADD', zset = 'ZADD'}

local function fill(dest, t, first, n)
  if t == 'string' then
    redis.call('SET', dest, ARGV[first])
    return
  end
  local last = first + n - 1
  for i = first, last, 1000 do
    local stop = math.min(i + 999, last)
    if t == 'zset' then
      local args = {}
      for j = i, stop, 2 do
        args[#args + 1] = ARGV[j + 1]
        args[#args + 1] = ARGV[j]
      end
      redis.call('ZADD', dest, unpack(args))
    else
      redis.call(commands[t], dest, unpack(ARGV, i, stop))
    end
  end
end

local function set_ttl(key, pttl)
  if pttl > 0 then
    redis.call('PEXPIRE', key, pttl)
  else
    redis.call('PERSIST', key)
  end
end

-- The key already holds the wanted value: align the TTL (within 1 s).
local function fix_ttl(key, pttl)
  local current = redis.call('PTTL', key)
  if pttl > 0 and (current < 0 or math.abs(current - pttl) > 1000) then
    redis.call('PEXPIRE', key, pttl)
    return 1
  elseif pttl < 0 and current >= 0 then
    redis.call('PERSIST', key)
    return 1
  end
  return 0
end

local out = {}
local pos = 2
for _, key in ipairs(KEYS) do
  local op, expect, new_digest, t = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3]
  local pttl = tonumber(ARGV[pos + 4])
  local n = tonumber(ARGV[pos + 5])
  local first = pos + 6
  pos = first + n
  local status, detail, events = 'ok', '', 0
  -- Unconditional string puts (push and pull, whose events nobody counts):
  -- one SET … GET, which refuses (WRONGTYPE) without writing when the key
  -- holds another type; only then is the type looked at below.
  local written = false
  if expect == '' and op == 'put' and t == 'string' then
    local reply
    if pttl > 0 then
      reply = redis.pcall('SET', key, ARGV[first], 'PX', pttl, 'GET')
    else
      reply = redis.pcall('SET', key, ARGV[first], 'GET')
    end
    written = not (type(reply) == 'table' and reply['err'])
    if written then
      events, detail = 1, new_digest
    end
  end
  local current_type = written and 'string' or type_of(key)
  if written then
    -- done above
  elseif current_type ~= 'none' and not string.find(allowed, ',' .. current_type .. ',', 1, true) then
    status, detail = 'skip', current_type
  else
    local current = nil
    if expect ~= '' then
      current = digest(key, current_type)
    end
    if current ~= nil and current ~= expect and current ~= new_digest then
      status, detail = 'conflict', current
    elseif current ~= nil and current == new_digest then
      status, detail = 'same', current
      if current_type ~= 'none' then
        events = fix_ttl(key, pttl)
      end
    elseif op == 'del' then
      if current_type ~= 'none' then
        redis.call('DEL', key)
        events = 1
      else
        status = 'same'
      end
      detail = '-'
    elseif op == 'stage' then
      local staged = ARGV[first]
      if type_of(staged) ~= t then
        status, detail = 'missing', staged
      else
        set_ttl(staged, pttl)
        redis.call('RENAME', staged, key)
        events, detail = 1, new_digest
      end
    else
      redis.call('DEL', scratch)
      fill(scratch, t, first, n)
      if pttl > 0 then
        redis.call('PEXPIRE', scratch, pttl)
      end
      redis.call('RENAME', scratch, key)
      events, detail = 1, new_digest
    end
  end
  out[#out + 1] = status
  out[#out + 1] = detail
  out[#out + 1] = tostring(events)
end
return out
