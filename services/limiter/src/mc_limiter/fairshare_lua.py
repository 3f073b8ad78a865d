"""Lua scripts behind the fair-share dispatcher (MC-LIM-903).

Every operation runs as one script so that acquire, release and dispatch are atomic across
replicas. Each script starts from the shared ``_PRELUDE`` (keys, helpers, lease reclaim and the
dispatch loop) and ends with its own body. Key layout, all under the injected prefix ``P``:

``P:w``        hash   tenant -> weight (absent: the dispatcher's default weight)
``P:run``      hash   tenant -> running slots (field removed at zero)
``P:total``    string running slots over all tenants
``P:leases``   zset   "tenant<US>request" -> lease expiry (ms); the reclaim index
``P:ready``    zset   backlogged tenant -> (running + 1) / weight; the dispatch order
``P:q:<t>``    zset   tenant t's queued request ids -> global enqueue sequence (FIFO)
``P:r:<t><US><id>`` hash  one request: st (Q|G|X), et (enqueued ms), gt, exp, lease, w (waiter),
                   cm (collect ms), c ("0" while a grant from the queue is not collected)
``P:n:<t><US><id>`` list  grant notification for a blocked waiter (BLPOP)
``P:seq``, ``P:granted`` (tenant -> grants), ``P:counters`` (named totals)

``<US>`` is the ASCII unit separator (31); the Python side rejects control characters in
tenants and request ids, so the first separator splits a lease member unambiguously.
A grant made from the queue (the requester is not in the call that granted it) holds its slot
for at most ``cm`` ms until the requester collects it (any ACQUIRE, POLL or RENEW of it, which
the blocking wait does at once); then it gets its full lease. A grant nobody collects is
reclaimed like a lapsed lease, so a requester that went away never holds a slot for a whole
lease. Keys are derived from the prefix inside the scripts, so on Redis Cluster the prefix must
carry a hash tag (for example ``{mc:fairshare}``) to keep every key in one slot.
"""

from __future__ import annotations

# ARGV[1..5] are common to every script: prefix, capacity, default weight, tombstone TTL (ms),
# now (ms, or "" to use the Redis server clock). Operation arguments start at ARGV[6].
_PRELUDE = r"""
local pfx = ARGV[1]
local cap = tonumber(ARGV[2])
local default_w = tonumber(ARGV[3])
local tomb_ms = tonumber(ARGV[4])
local now = tonumber(ARGV[5])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local SEP = '\031'
local NOTE_TTL_MS = 60000
local RECLAIM_BATCH = 1000
local TIE_CANDIDATES = 64
local K_W = pfx .. ':w'
local K_RUN = pfx .. ':run'
local K_TOTAL = pfx .. ':total'
local K_LEASES = pfx .. ':leases'
local K_READY = pfx .. ':ready'
local K_SEQ = pfx .. ':seq'
local K_GRANTED = pfx .. ':granted'
local K_COUNTERS = pfx .. ':counters'

local dispatched = {}
local counters = {}
local granted_by_tenant = {}
local weights = {}

local function rkey(t, rid) return pfx .. ':r:' .. t .. SEP .. rid end
local function qkey(t) return pfx .. ':q:' .. t end
local function total() return tonumber(redis.call('GET', K_TOTAL) or '0') end
local function running(t) return tonumber(redis.call('HGET', K_RUN, t) or '0') end
local function weight(t)
  local w = weights[t]
  if w == nil then
    w = tonumber(redis.call('HGET', K_W, t) or default_w)
    weights[t] = w
  end
  return w
end
-- Counters are summed in the script and written once by finish(), which every script returns
-- through: it saves two commands per decision.
local function count(name) counters[name] = (counters[name] or 0) + 1 end
local function finish(reply)
  for name, n in pairs(counters) do redis.call('HINCRBY', K_COUNTERS, name, n) end
  for t, n in pairs(granted_by_tenant) do redis.call('HINCRBY', K_GRANTED, t, n) end
  return reply
end

-- Keep the running count and, if the tenant is backlogged, its place in the dispatch order.
local function set_running(t, r)
  if r <= 0 then redis.call('HDEL', K_RUN, t) else redis.call('HSET', K_RUN, t, r) end
  redis.call('ZADD', K_READY, 'XX', (r + 1) / weight(t), t)
end

-- hold: how long the slot is held before the first renewal (the lease, or the collection
-- deadline of a grant from the queue, marked uncollected with c = "0").
local function grant(t, rid, lease, hold)
  local exp = now + hold
  redis.call('HSET', rkey(t, rid), 'st', 'G', 'gt', now, 'exp', exp, 'lease', lease)
  if hold < lease then redis.call('HSET', rkey(t, rid), 'c', '0') end
  redis.call('ZADD', K_LEASES, exp, t .. SEP .. rid)
  redis.call('INCR', K_TOTAL)
  set_running(t, running(t) + 1)
  granted_by_tenant[t] = (granted_by_tenant[t] or 0) + 1
  return exp
end

local function free_slot(t)
  redis.call('DECR', K_TOTAL)
  set_running(t, running(t) - 1)
end

local function dequeue(t, rid)
  local qk = qkey(t)
  redis.call('ZREM', qk, rid)
  if redis.call('EXISTS', qk) == 0 then redis.call('ZREM', K_READY, t) end
end

-- The backlogged tenant furthest below its weighted share: lowest (running + 1) / weight;
-- ties go to the tenant whose oldest queued request was enqueued first.
local function pick()
  while true do
    local head = redis.call('ZRANGE', K_READY, 0, 0, 'WITHSCORES')
    if #head == 0 then return nil end
    local ties = redis.call('ZRANGEBYSCORE', K_READY, head[2], head[2], 'LIMIT', 0, TIE_CANDIDATES)
    local best, best_seq = nil, nil
    for _, t in ipairs(ties) do
      local h = redis.call('ZRANGE', qkey(t), 0, 0, 'WITHSCORES')
      if #h == 0 then
        redis.call('ZREM', K_READY, t)  -- defensive: a ready tenant must have queued work
      elseif best_seq == nil or tonumber(h[2]) < best_seq then
        best, best_seq = t, tonumber(h[2])
      end
    end
    if best ~= nil then return best end
  end
end

-- Grants the head of the picked tenant's queue. Scripts are not rolled back on error, so a
-- request record that vanished is skipped rather than allowed to fail half-way.
local function dispatch_one()
  local t = pick()
  if t == nil then return false end
  local qk = qkey(t)
  local rid = redis.call('ZPOPMIN', qk)[1]
  if redis.call('EXISTS', qk) == 0 then redis.call('ZREM', K_READY, t) end
  local f = redis.call('HMGET', rkey(t, rid), 'lease', 'et', 'w', 'cm')
  if not f[1] or not f[2] then
    count('orphans_skipped')
    return true
  end
  local lease = tonumber(f[1])
  local hold = lease
  local cm = tonumber(f[4])
  if cm and cm > 0 and cm < lease then hold = cm end
  local exp = grant(t, rid, lease, hold)
  count('granted_from_queue')
  if f[3] == '1' then
    local nk = pfx .. ':n:' .. t .. SEP .. rid
    redis.call('RPUSH', nk, '1')
    redis.call('PEXPIRE', nk, NOTE_TTL_MS)
  end
  local n = #dispatched
  dispatched[n + 1] = t
  dispatched[n + 2] = rid
  dispatched[n + 3] = exp
  dispatched[n + 4] = now - tonumber(f[2])
  return true
end

-- Work conservation: queued work exists only while every slot is taken.
local function fill()
  while total() < cap do
    if not dispatch_one() then return end
  end
end

-- A holder that stopped renewing loses its slot once the lease passes; the request is kept as
-- an 'X' tombstone for tomb_ms so its owner can learn what happened.
local function reclaim()
  local due = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now, 'LIMIT', 0, RECLAIM_BATCH)
  for _, m in ipairs(due) do
    redis.call('ZREM', K_LEASES, m)
    local i = string.find(m, SEP, 1, true)
    local rk = pfx .. ':r:' .. m
    redis.call('HSET', rk, 'st', 'X')
    redis.call('PEXPIRE', rk, tomb_ms)
    free_slot(string.sub(m, 1, i - 1))
    count('expired')
  end
end

-- The requester learned of its grant: the slot is held for its full lease from now on.
local function collect(t, rid)
  local rk = rkey(t, rid)
  if redis.call('HGET', rk, 'c') ~= '0' then
    return tonumber(redis.call('HGET', rk, 'exp'))
  end
  local exp = now + tonumber(redis.call('HGET', rk, 'lease'))
  redis.call('HSET', rk, 'exp', exp, 'c', '1')
  redis.call('ZADD', K_LEASES, 'XX', exp, t .. SEP .. rid)
  count('collected')
  return exp
end

reclaim()
fill()
"""

# ARGV[6] lease ms, ARGV[7] collect ms (how long a grant from the queue waits for its requester;
# 0: its whole lease), ARGV[8] n, then n pairs (tenant, request id).
# Reply: {{state, value, ...}, dispatched} where value is the lease expiry for 'G' and the
# 0-based position in the tenant's own queue for 'Q'.
ACQUIRE = (
    _PRELUDE
    + r"""
local lease = tonumber(ARGV[6])
local collect_ms = ARGV[7]
local n = tonumber(ARGV[8])
local out = {}
for i = 0, n - 1 do
  local t, rid = ARGV[9 + 2 * i], ARGV[10 + 2 * i]
  local rk = rkey(t, rid)
  local st = redis.call('HGET', rk, 'st')
  if st == 'G' then
    out[#out + 1] = 'G'
    out[#out + 1] = collect(t, rid)
  elseif st == 'Q' then
    out[#out + 1] = 'Q'
    out[#out + 1] = redis.call('ZRANK', qkey(t), rid)
  else
    if st then redis.call('DEL', rk) end
    if total() < cap then
      redis.call('HSET', rk, 'et', now)
      out[#out + 1] = 'G'
      out[#out + 1] = grant(t, rid, lease, lease)
      count('granted_immediately')
    else
      local seq = redis.call('INCR', K_SEQ)
      redis.call('HSET', rk, 'st', 'Q', 'et', now, 'lease', lease, 'cm', collect_ms)
      redis.call('ZADD', qkey(t), seq, rid)
      redis.call('ZADD', K_READY, 'NX', (running(t) + 1) / weight(t), t)
      out[#out + 1] = 'Q'
      out[#out + 1] = redis.call('ZCARD', qkey(t)) - 1
      count('queued')
    end
  end
end
return finish({out, dispatched})
"""
)

# ARGV[6] n, then n pairs. Reply: {{status, ...}, dispatched}; status R (released), X (lease
# had expired), Q (still queued: nothing to release), N (unknown).
RELEASE = (
    _PRELUDE
    + r"""
local n = tonumber(ARGV[6])
local out = {}
for i = 0, n - 1 do
  local t, rid = ARGV[7 + 2 * i], ARGV[8 + 2 * i]
  local rk = rkey(t, rid)
  local st = redis.call('HGET', rk, 'st')
  if st == 'G' then
    redis.call('ZREM', K_LEASES, t .. SEP .. rid)
    redis.call('DEL', rk)
    free_slot(t)
    count('released')
    fill()
    out[#out + 1] = 'R'
  else
    out[#out + 1] = st or 'N'
  end
end
return finish({out, dispatched})
"""
)

# ARGV[6] tenant, ARGV[7] request id. Withdraws a queued request or releases a granted one.
# Reply: {previous state (Q|G|X|N), dispatched}.
CANCEL = (
    _PRELUDE
    + r"""
local t, rid = ARGV[6], ARGV[7]
local rk = rkey(t, rid)
local st = redis.call('HGET', rk, 'st')
if st == 'Q' then
  dequeue(t, rid)
  redis.call('DEL', rk)
  count('cancelled')
elseif st == 'G' then
  redis.call('ZREM', K_LEASES, t .. SEP .. rid)
  redis.call('DEL', rk)
  free_slot(t)
  count('released')
  fill()
elseif st == 'X' then
  redis.call('DEL', rk)
end
return finish({st or 'N', dispatched})
"""
)

# ARGV[6] lease ms, ARGV[7] tenant, ARGV[8] request id. Reply: {state, new expiry or 0}.
RENEW = (
    _PRELUDE
    + r"""
local lease = tonumber(ARGV[6])
local t, rid = ARGV[7], ARGV[8]
local rk = rkey(t, rid)
local st = redis.call('HGET', rk, 'st')
if st == 'G' then
  local exp = now + lease
  redis.call('HSET', rk, 'exp', exp, 'lease', lease, 'c', '1')
  redis.call('ZADD', K_LEASES, 'XX', exp, t .. SEP .. rid)
  return finish({'G', exp, dispatched})
end
return finish({st or 'N', 0, dispatched})
"""
)

# ARGV[6] "1" to register a waiter (grant will be pushed to P:n:...), ARGV[7] tenant,
# ARGV[8] request id. Reply: {state, expiry for G | queue position for Q | 0, dispatched}.
POLL = (
    _PRELUDE
    + r"""
local watch = ARGV[6] == '1'
local t, rid = ARGV[7], ARGV[8]
local rk = rkey(t, rid)
local st = redis.call('HGET', rk, 'st')
if st == 'G' then
  return finish({'G', collect(t, rid), dispatched})
elseif st == 'Q' then
  if watch then redis.call('HSET', rk, 'w', '1') end
  return finish({'Q', redis.call('ZRANK', qkey(t), rid), dispatched})
end
return finish({st or 'N', 0, dispatched})
"""
)

# ARGV[6] tenant, ARGV[7] weight. Re-scores a backlogged tenant so the next dispatch decision
# already uses the new weight for the work it has queued.
SET_WEIGHT = (
    _PRELUDE
    + r"""
local t, w = ARGV[6], ARGV[7]
redis.call('HSET', K_W, t, w)
weights[t] = tonumber(w)
redis.call('ZADD', K_READY, 'XX', (running(t) + 1) / weights[t], t)
return finish({dispatched})
"""
)

# Reply: {total, run (flat hash), weights (flat hash), queued (flat tenant, length),
#         granted (flat hash), counters (flat hash), dispatched}.
STATS = (
    _PRELUDE
    + r"""
finish(nil)
local queued = {}
for _, t in ipairs(redis.call('ZRANGE', K_READY, 0, -1)) do
  queued[#queued + 1] = t
  queued[#queued + 1] = redis.call('ZCARD', qkey(t))
end
return {
  total(),
  redis.call('HGETALL', K_RUN),
  redis.call('HGETALL', K_W),
  queued,
  redis.call('HGETALL', K_GRANTED),
  redis.call('HGETALL', K_COUNTERS),
  dispatched,
}
"""
)
