"""The two Lua scripts that make the limiter atomic in Redis (memory_store.py runs the same arithmetic).

Redis runs a script to completion before anything else, so "check every limit of the key and its team,
then reserve in all or none" cannot interleave with another replica's admission. Time comes from the
Redis server (TIME), so replicas with skewed clocks still agree. Every key a script touches is in KEYS.

Counter arguments, 4 per counter in ARGV after the fixed ones: kind (b = bucket, w = window,
s = slots), limit, cost (admit) or delta (settle), param_ms (bucket: ms to refill fully; window: period;
slots: lease). Settle adds the period each window reservation went to.
"""

from __future__ import annotations

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_BUCKET_LEVEL = """
local function bucket_level(key, limit, param, now)
  local v = redis.call('HMGET', key, 'l', 't')
  local level, at = tonumber(v[1]), tonumber(v[2])
  if level == nil or at == nil then return limit end
  return math.min(limit, level + math.max(0, now - at) * limit / param)
end
"""

# KEYS: the counters. ARGV: member (the admission id), then 4 per counter.
# Returns {refused index (0 = admitted), now, then per counter: remaining, reset_ms, retry_ms, period}.
ADMIT = (
    _NOW
    + _BUCKET_LEVEL
    + """
local member = ARGV[1]
local out = {0, now}
local refused, worst = 0, 0
local levels, periods = {}, {}
for i = 1, #KEYS do
  local a = 1 + (i - 1) * 4
  local kind, limit = ARGV[a + 1], tonumber(ARGV[a + 2])
  local cost, param = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local remaining, reset, retry, period = 0, 0, 0, 0
  if kind == 'b' then
    local rate = limit / param
    local level = bucket_level(KEYS[i], limit, param, now)
    levels[i] = level
    if cost <= level then remaining, retry = level - cost, 0
    elseif cost > limit then remaining, retry = level, -1
    else remaining, retry = level, math.ceil((cost - level) / rate) end
    reset = math.ceil((limit - remaining) / rate)
  elseif kind == 'w' then
    period = math.floor(now / param)
    local v = redis.call('HMGET', KEYS[i], 'p', 'u')
    local used = 0
    if tonumber(v[1]) == period then used = tonumber(v[2]) or 0 end
    levels[i] = used
    reset = (period + 1) * param - now
    if used + cost <= limit then remaining, retry = limit - used - cost, 0
    else
      remaining = math.max(0, limit - used)
      if cost > limit then retry = -1 else retry = reset end
    end
  else
    -- leases of admissions whose replica never settled them
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    local busy = redis.call('ZCARD', KEYS[i])
    if busy + cost <= limit then remaining, retry = limit - busy - cost, 0
    else remaining, retry = math.max(0, limit - busy), 1000 end
  end
  periods[i] = period
  if retry ~= 0 and (refused == 0 or retry == -1 or (worst ~= -1 and retry > worst)) then
    refused, worst = i, retry
  end
  table.insert(out, math.floor(remaining))
  table.insert(out, reset)
  table.insert(out, retry)
  table.insert(out, period)
end
if refused > 0 then
  out[1] = refused
  return out
end
for i = 1, #KEYS do
  local a = 1 + (i - 1) * 4
  local kind, cost, param = ARGV[a + 1], tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  if kind == 'b' then
    redis.call('HSET', KEYS[i], 'l', tostring(levels[i] - cost), 't', now)
    redis.call('PEXPIRE', KEYS[i], param + 1000)
  elseif kind == 'w' then
    redis.call('HSET', KEYS[i], 'p', periods[i], 'u', levels[i] + cost)
    redis.call('PEXPIRE', KEYS[i], (periods[i] + 1) * param - now + 60000)
  else
    redis.call('ZADD', KEYS[i], now + param, member)
    redis.call('PEXPIRE', KEYS[i], param)
  end
end
return out
"""
)

# KEYS: the counters, then the usage hash if ARGV[2] == '1'.
# ARGV: member, has_usage, then 5 per counter (kind, limit, delta, param_ms, period), then usage:
# field prefix, prompt tokens, completion tokens, retention seconds.
SETTLE = (
    _NOW
    + _BUCKET_LEVEL
    + """
local member, has_usage = ARGV[1], ARGV[2] == '1'
local n = #KEYS
if has_usage then n = n - 1 end
for i = 1, n do
  local a = 2 + (i - 1) * 5
  local kind, limit, delta, param, period =
    ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  if kind == 'b' and delta ~= 0 then
    local level = math.min(limit, bucket_level(KEYS[i], limit, param, now) - delta)
    redis.call('HSET', KEYS[i], 'l', tostring(level), 't', now)
    redis.call('PEXPIRE', KEYS[i], param + 1000)
  elseif kind == 'w' and delta ~= 0 then
    local v = redis.call('HMGET', KEYS[i], 'p', 'u')
    -- the period rolled over since admission: the old one is gone, nothing to reconcile
    if tonumber(v[1]) == period then
      redis.call('HSET', KEYS[i], 'u', math.max(0, (tonumber(v[2]) or 0) + delta))
    end
  elseif kind == 's' then
    redis.call('ZREM', KEYS[i], member)
  end
end
if has_usage then
  local u = KEYS[n + 1]
  local a = 2 + n * 5
  redis.call('HINCRBY', u, ARGV[a + 1] .. 'r', 1)
  redis.call('HINCRBY', u, ARGV[a + 1] .. 'p', ARGV[a + 2])
  redis.call('HINCRBY', u, ARGV[a + 1] .. 'c', ARGV[a + 3])
  redis.call('EXPIRE', u, ARGV[a + 4])
end
return 1
"""
)
