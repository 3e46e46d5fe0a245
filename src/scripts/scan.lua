-- replhub scan: one SCAN step over a namespace, flat (Webdis breaks the
-- nested reply of a plain SCAN). ARGV: cursor, MATCH pattern, COUNT, '1' to
-- include digests, and a bucket mask: 64 characters, '1' for the buckets
-- (see buckets.lua) whose keys to return, or '' for every key.
-- Returns the next cursor, then per key: key, type, pttl, digest ('-'
-- unless asked or for other types).
local r = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local with_digest = ARGV[4] == '1'
local mask = ARGV[5]
local out = {r[1]}
for _, key in ipairs(r[2]) do
  local b = bucket_of(key) + 1
  if mask == '' or string.sub(mask, b, b) == '1' then
    local t = type_of(key)
    out[#out + 1] = key
    out[#out + 1] = t
    out[#out + 1] = tostring(redis.call('PTTL', key))
    out[#out + 1] = with_digest and digest(key, t) or '-'
  end
end
return out
