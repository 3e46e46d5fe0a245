-- replhub scan: one SCAN step over a namespace, flat (Webdis breaks the
-- nested reply of a plain SCAN). ARGV: cursor, MATCH pattern, COUNT, and
-- '1' to include digests. Returns the next cursor, then per key:
-- key, type, pttl, digest ('-' unless asked or for other types).
local r = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local with_digest = ARGV[4] == '1'
local out = {r[1]}
for _, key in ipairs(r[2]) do
  local t = type_of(key)
  out[#out + 1] = key
  out[#out + 1] = t
  out[#out + 1] = tostring(redis.call('PTTL', key))
  out[#out + 1] = with_digest and digest(key, t) or '-'
end
return out
