-- replhub read: the full state of each key in KEYS, as one flat array
-- (Webdis drops nested and nil array elements, so nothing here is nested).
-- ARGV[1] = '1' to include digests.
-- Per key: type, pttl, digest ('-' unless asked), n, then n items:
--   string: the value; hash: field, value, ...; list: elements in order;
--   set: members; zset: member, score, ...; other types: nothing.
local with_digest = ARGV[1] == '1'
local out = {}
for _, key in ipairs(KEYS) do
  -- Most keys are strings (or gone): one GET tells both, and TYPE is only
  -- asked when GET refuses the key (WRONGTYPE).
  local value = redis.pcall('GET', key)
  local t
  if type(value) == 'string' then
    t = 'string'
  elseif value == false then
    t = 'none'
  else
    t = type_of(key)
  end
  out[#out + 1] = t
  out[#out + 1] = t == 'none' and '-2' or tostring(redis.call('PTTL', key))
  out[#out + 1] = with_digest and digest(key, t) or '-'
  local items
  if t == 'string' then
    items = {value}
  elseif t == 'none' then
    items = {}
  elseif t == 'hash' then
    items = redis.call('HGETALL', key)
  elseif t == 'list' then
    items = redis.call('LRANGE', key, 0, -1)
  elseif t == 'set' then
    items = redis.call('SMEMBERS', key)
  elseif t == 'zset' then
    items = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  else
    items = {}
  end
  out[#out + 1] = tostring(#items)
  for _, v in ipairs(items) do
    out[#out + 1] = v
  end
end
return out
