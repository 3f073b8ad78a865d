"""Server-side Lua for the hot path: every limit of one decision is evaluated and consumed
(all or none) in a single EVALSHA round trip, so concurrent replicas can never interleave
between the check and the update.

Time comes from Redis ``TIME`` inside the script, not from the caller: all replicas talking
to a shard then share one clock, so skew between limiter hosts cannot widen a window or
shorten a retry. (Redis 7 replicates script effects, so a non-deterministic ``TIME`` is
allowed.) The algorithms mirror ``algorithms.py`` line for line; see that module for the
maths and the sliding window's error bound.

Scripts are loaded once per shard (``SCRIPT LOAD``) and run with ``EVALSHA``; a ``NOSCRIPT``
reply (shard restarted or flushed) reloads and retries once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

# ARGV: cost, n, then per limit: algo (0 gcra, 1 sliding), limit, window_us, burst,
# sub_windows, enforce (1/0), n_remote. KEYS: per limit its counter key followed by its
# n_remote remote-usage keys (multi-region counts published by peer regions: slot counts,
# plus "at"/"rate": the peer's usage is extrapolated at its last rate from "at" to now, for
# at most one window, so the sync lag does not let every region spend the same capacity).
# cost = 0 is a peek: evaluated as a 1-unit request, nothing is consumed.
# Reply: {all_ok, now_us, then per limit: allowed, remaining, retry_us, used, slot}.
CHECK_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local unit = cost
if cost == 0 then unit = 1 end
local EPS = 1e-6
local st = {}
local ki = 1
local ai = 3
local all_ok = 1
for i = 1, n do
  local s = {}
  s.algo = tonumber(ARGV[ai])
  s.lim = tonumber(ARGV[ai + 1])
  s.win = tonumber(ARGV[ai + 2])
  local burst = tonumber(ARGV[ai + 3])
  local subs = tonumber(ARGV[ai + 4])
  s.enforce = tonumber(ARGV[ai + 5])
  local nrem = tonumber(ARGV[ai + 6])
  ai = ai + 7
  s.key = KEYS[ki]
  if s.algo == 0 then
    local T = s.win / s.lim
    local tau = burst * T
    local tat = tonumber(redis.call('GET', s.key) or now)
    local base = math.max(tat, now)
    s.new_tat = base + unit * T
    s.ok = (s.new_tat - now) <= tau + EPS
    s.T = T
    s.tau = tau
    s.in_use = base - now
    s.slot = 0
    if s.ok then s.retry = 0 else s.retry = s.new_tat - now - tau end
  else
    local sw = s.win / subs
    local idx = math.floor(now / sw)
    local frac = (now - idx * sw) / sw
    local fields = {}
    for k = 0, subs do fields[k + 1] = string.format('%d', idx - subs + k) end
    local vals = redis.call('HMGET', s.key, unpack(fields))
    local cnt = {}
    for k = 1, subs + 1 do cnt[k] = tonumber(vals[k]) or 0 end
    for r = 1, nrem do
      local rv = redis.call('HMGET', KEYS[ki + r], 'at', 'rate', unpack(fields))
      for k = 1, subs + 1 do cnt[k] = cnt[k] + (tonumber(rv[k + 2]) or 0) end
      local at = tonumber(rv[1])
      local rate = tonumber(rv[2])
      if at and rate and now > at then
        cnt[subs + 1] = cnt[subs + 1] + rate * math.min(now - at, s.win)
      end
    end
    local full = 0
    for k = 2, subs + 1 do full = full + cnt[k] end
    s.est = full + cnt[1] * (1 - frac)
    s.ok = s.est + unit <= s.lim + EPS
    s.sw = sw
    s.subs = subs
    s.slot = idx
    s.retry = 0
    if not s.ok then
      local at = nil
      for step = 0, subs do
        local f = 0
        for k = step + 2, subs + 1 do f = f + cnt[k] end
        if f + unit <= s.lim + EPS then
          local old = cnt[step + 1]
          local g = 0
          if step == 0 then g = frac end
          local need = f + old + unit - s.lim
          if need > 0 and old > 0 then g = math.max(g, need / old) end
          at = (idx + step + g) * sw
          break
        end
      end
      if at == nil then at = (idx + subs + 1) * sw end
      s.retry = at - now
    end
  end
  if s.enforce == 1 and not s.ok then all_ok = 0 end
  st[i] = s
  ki = ki + 1 + nrem
end
local out = {all_ok, now}
for i = 1, n do
  local s = st[i]
  local consume = cost > 0 and all_ok == 1 and s.ok
  local remaining
  local used
  if s.algo == 0 then
    local in_use = s.in_use
    if consume then
      in_use = s.new_tat - now
      redis.call('SET', s.key, string.format('%.3f', s.new_tat),
        'PX', math.ceil(in_use / 1000) + 1)
    end
    remaining = math.floor((s.tau - in_use) / s.T + EPS)
    used = math.ceil(in_use / s.T - EPS)
  else
    local est = s.est
    if consume then
      est = est + cost
      redis.call('HINCRBY', s.key, string.format('%d', s.slot), cost)
      redis.call('PEXPIRE', s.key, math.ceil((s.win + s.sw) / 1000) + 1)
      if redis.call('HLEN', s.key) > s.subs + 3 then
        local oldest = s.slot - s.subs
        for _, f in ipairs(redis.call('HKEYS', s.key)) do
          if tonumber(f) < oldest then redis.call('HDEL', s.key, f) end
        end
      end
    end
    remaining = math.floor(s.lim - est + EPS)
    used = math.ceil(est - EPS)
  end
  if remaining < 0 then remaining = 0 end
  if used < 0 then used = 0 end
  local ok = 0
  if s.ok then ok = 1 end
  out[#out + 1] = ok
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(s.retry)
  out[#out + 1] = used
  out[#out + 1] = s.slot
end
return out
"""

# Gives back what CHECK_LUA consumed (used when a decision spans two shards and the second
# denies). ARGV: cost, n, then per limit: algo, limit, window_us, slot. KEYS: counter keys.
REFUND_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local ai = 3
for i = 1, n do
  local algo = tonumber(ARGV[ai])
  local lim = tonumber(ARGV[ai + 1])
  local win = tonumber(ARGV[ai + 2])
  local slot = ARGV[ai + 3]
  ai = ai + 4
  local key = KEYS[i]
  if algo == 0 then
    local tat = tonumber(redis.call('GET', key))
    if tat then
      local back = tat - cost * win / lim
      if back <= now then
        redis.call('DEL', key)
      else
        redis.call('SET', key, string.format('%.3f', back), 'KEEPTTL')
      end
    end
  else
    local c = tonumber(redis.call('HGET', key, slot))
    if c then
      if c <= cost then redis.call('HDEL', key, slot)
      else redis.call('HINCRBY', key, slot, -cost) end
    end
  end
end
return n
"""


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A script identified by its SHA1, run with EVALSHA and reloaded on NOSCRIPT."""

    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> LuaScript:
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())

    async def load(self, client: Redis) -> None:
        await client.script_load(self.source)

    async def run(self, client: Redis, keys: list[str], args: list[str | int]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load(client)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


CHECK_SCRIPT = LuaScript.of(CHECK_LUA)
REFUND_SCRIPT = LuaScript.of(REFUND_LUA)
