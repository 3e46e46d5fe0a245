-- replhub buckets: one SCAN step over a namespace, summarised. Every key of
-- a replicated type adds a 64-bit hash of (key, digest, has-TTL) into one of
-- 64 buckets chosen by its name (XOR, so order does not matter). Summing the
-- steps gives a namespace fingerprint per bucket; buckets equal on both
-- sides hold equal keys, so a resync only looks closer at the others, and an
-- unchanged namespace costs about one byte per key on the wire.
-- ARGV: cursor, MATCH pattern, COUNT, allowed types (",string,hash,").
-- Returns the next cursor, the number of keys counted, then 128 words
-- (bucket b: words 2b+1 and 2b+2), each 8 hex digits.
local r = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local allowed = ARGV[4]
local words = {}
for i = 1, 128 do
  words[i] = 0
end
local counted = 0
for _, key in ipairs(r[2]) do
  local t = type_of(key)
  if string.find(allowed, ',' .. t .. ',', 1, true) then
    counted = counted + 1
    local b = bucket_of(key)
    local ttl = redis.call('PTTL', key) > 0 and 'T' or 'P'
    local h = redis.sha1hex(key .. '\0' .. digest(key, t) .. ttl)
    words[2 * b + 1] = bit.bxor(words[2 * b + 1], tonumber(string.sub(h, 1, 8), 16))
    words[2 * b + 2] = bit.bxor(words[2 * b + 2], tonumber(string.sub(h, 9, 16), 16))
  end
end
local out = {r[1], tostring(counted)}
for i = 1, 128 do
  out[#out + 1] = bit.tohex(words[i], 8)
end
return out
