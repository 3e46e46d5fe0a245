-- replhub stage: append one chunk of a value too large for one request to a
-- staging key under __replhub__: (KEYS[1]); `write` later RENAMEs it into
-- place atomically. The staging key expires if the copy is abandoned.
-- ARGV[1] = 'first' | 'more', ARGV[2] = type, ARGV[3..] = items (for a
-- string: the chunk itself, usually sent raw as the PUT body).
local key = KEYS[1]
if ARGV[1] == 'first' then
  redis.call('DEL', key)
end
local t = ARGV[2]
if t == 'string' then
  redis.call('APPEND', key, ARGV[3])
elseif t == 'zset' then
  for i = 3, #ARGV, 1000 do
    local args = {}
    for j = i, math.min(i + 999, #ARGV), 2 do
      args[#args + 1] = ARGV[j + 1]
      args[#args + 1] = ARGV[j]
    end
    redis.call('ZADD', key, unpack(args))
  end
else
  local command = ({hash = 'HSET', list = 'RPUSH', set = 'SADD'})[t]
  for i = 3, #ARGV, 1000 do
    redis.call(command, key, unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
end
redis.call('PEXPIRE', key, 600000)
return redis.call('TYPE', key)['ok']
