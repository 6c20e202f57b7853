"""The Lua scripts behind the accumulator's atomic steps; each touches the keys of one queue only.

Keys a script builds from a prefix argument (a call's hash) carry the same `{q}` hash tag as its declared
keys, so every script stays inside one Redis Cluster slot.
"""

from __future__ import annotations

# Claim the earliest-deadline queued calls into a new `building` batch.
# Race closed: two replicas flushing one queue at once never put a call into two batches, because moving a
# call from `pending` to a batch list is one step.
CLAIM = """
local pending, arrivals, bytes, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local batches, batch, calls = KEYS[5], KEYS[6], KEYS[7]
local max_n, max_bytes, line_overhead = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local bid, owner, now, lease_until, call_prefix = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local ids = redis.call('ZRANGE', pending, 0, max_n - 1, 'WITHSCORES')
local taken, total = {}, 0
for i = 1, #ids, 2 do
  local id, deadline = ids[i], ids[i + 1]
  local size = redis.call('HSTRLEN', call_prefix .. id, 'body') + line_overhead
  if #taken > 0 and total + size > max_bytes then break end
  total = total + size
  redis.call('ZREM', pending, id)
  redis.call('ZREM', arrivals, id)
  redis.call('HSET', call_prefix .. id, 'state', 'submitted', 'batch', bid)
  redis.call('ZADD', inflight, deadline, id)
  taken[#taken + 1] = id
end
if #taken == 0 then return {} end
redis.call('DECRBY', bytes, total - #taken * line_overhead)
for i = 1, #taken, 1000 do
  redis.call('RPUSH', calls, unpack(taken, i, math.min(i + 999, #taken)))
end
redis.call('HSET', batch, 'state', 'building', 'owner', owner, 'created_at', now, 'n', #taken, 'polls', 0)
redis.call('ZADD', batches, lease_until, bid)
return taken
"""

# Record the provider's batch id, but only if the batch is still ours and still building.
# Race closed: a replica whose lease lapsed (and whose batch another replica recovered) cannot overwrite.
MARK_SUBMITTED = """
local batch, batches = KEYS[1], KEYS[2]
local bid, owner, provider_id, now, next_poll = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('HGET', batch, 'state') ~= 'building' or redis.call('HGET', batch, 'owner') ~= owner then
  return 0
end
redis.call('HSET', batch, 'state', 'submitted', 'provider_id', provider_id, 'submitted_at', now)
redis.call('ZADD', batches, next_poll, bid)
return 1
"""

# Take over a `building` batch whose lease lapsed (its builder crashed between claim and record).
TAKE_OVER = """
local batch, batches = KEYS[1], KEYS[2]
local bid, owner, now, lease_until = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if redis.call('HGET', batch, 'state') ~= 'building' then return 0 end
local score = redis.call('ZSCORE', batches, bid)
if not score or tonumber(score) > now then return 0 end
redis.call('HSET', batch, 'owner', owner)
redis.call('ZADD', batches, lease_until, bid)
return 1
"""

# Store a call's final result exactly once, with its cost added to the tenant's daily totals.
# Returns 1 when stored, 0 when the call already ended or moved on (a late batch result), -1 when unknown.
# Race closed: a batch result and a real-time escalation of the same call can both finish; only the first
# to arrive stores and is billed in the totals, the other is counted as waste.
STORE_RESULT = """
local call, result, inflight, escalating, totals = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, from_batch, status, body, lane, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local cost, baseline, savings, now, tenant_ttl = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local state = redis.call('HGET', call, 'state')
if not state then return -1 end
if state == 'done' then return 0 end
if from_batch ~= '' then
  if state ~= 'submitted' or redis.call('HGET', call, 'batch') ~= from_batch then return 0 end
elseif state ~= 'escalated' then
  return 0
end
redis.call('HSET', result, 'status', status, 'body', body, 'lane', lane, 'cost', cost, 'baseline', baseline,
  'savings', savings, 'finished_at', now)
redis.call('EXPIRE', result, ttl)
redis.call('HSET', call, 'state', 'done', 'lane', lane, 'finished_at', now)
redis.call('HDEL', call, 'body')
redis.call('EXPIRE', call, ttl)
redis.call('ZREM', inflight, id)
redis.call('ZREM', escalating, id)
redis.call('HINCRBY', totals, lane .. ':requests', 1)
if cost ~= '' then
  redis.call('HINCRBYFLOAT', totals, lane .. ':cost_usd', cost)
  redis.call('HINCRBYFLOAT', totals, lane .. ':baseline_usd', baseline)
  redis.call('HINCRBYFLOAT', totals, lane .. ':savings_usd', savings)
end
redis.call('EXPIRE', totals, tenant_ttl)
return 1
"""

# Put a submitted call back on its queue after its batch gave it no result (expired, cancelled, failed).
REQUEUE = """
local call, pending, arrivals, bytes, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, bid = ARGV[1], ARGV[2]
if redis.call('HGET', call, 'state') ~= 'submitted' or redis.call('HGET', call, 'batch') ~= bid then return 0 end
local deadline = redis.call('HGET', call, 'deadline')
redis.call('HSET', call, 'state', 'queued', 'batch', '')
redis.call('HINCRBY', call, 'attempts', 1)
redis.call('ZREM', inflight, id)
redis.call('ZADD', pending, deadline, id)
redis.call('ZADD', arrivals, redis.call('HGET', call, 'received_at'), id)
redis.call('INCRBY', bytes, redis.call('HSTRLEN', call, 'body'))
return 1
"""

# Take a call out of the batch lane to answer it in real time; returns its body, or false.
# A queued call leaves its queue; a submitted one stays in its batch (a late result is dropped); an
# escalation whose lease lapsed (its replica crashed) is taken over.
# Race closed: the guard on two replicas never sends the same call to real time twice while a lease holds.
ESCALATE = """
local call, pending, arrivals, bytes, inflight, escalating = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id, now, lease_until = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local state = redis.call('HGET', call, 'state')
if state == 'queued' then
  redis.call('ZREM', pending, id)
  redis.call('ZREM', arrivals, id)
  redis.call('DECRBY', bytes, redis.call('HSTRLEN', call, 'body'))
elseif state == 'submitted' then
  redis.call('ZREM', inflight, id)
elseif state == 'escalated' then
  local score = redis.call('ZSCORE', escalating, id)
  if score and tonumber(score) > now then return false end
else
  return false
end
redis.call('HSET', call, 'state', 'escalated')
redis.call('ZADD', escalating, lease_until, id)
return redis.call('HGET', call, 'body')
"""
