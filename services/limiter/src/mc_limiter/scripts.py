"""Server-side Lua for the hot path: every limit of a decision is evaluated and consumed
(all or none) inside one script, so concurrent replicas can never interleave between the
check and the update. One script call carries many independent decisions (a ``CheckBatch``,
or the unary checks that arrived together on a shard): each is still all-or-none over its own
limits, decisions run in order (a later one sees what an earlier one consumed), and the call
is atomic as a whole. Command parsing, script lookup, ``TIME`` and reply framing are then paid
once per call instead of once per decision.

Time comes from Redis ``TIME`` inside the script, not from the caller: all replicas talking
to a shard then share one clock, so skew between limiter hosts cannot widen a window or
shorten a retry. (Redis 7 replicates script effects, so a non-deterministic ``TIME`` is
allowed.) The algorithms mirror ``algorithms.py`` line for line; see that module for the
maths and the sliding window's error bound.

Scripts are loaded once per shard (``SCRIPT LOAD``) and run with ``EVALSHA``; a ``NOSCRIPT``
reply (shard restarted or flushed) reloads and retries once.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from mc_limiter.redis_client import hot_path_connection, resp, resp_int
from mc_limiter.sharding import SHARD_UNAVAILABLE_ERRORS

# Values per limit in CHECK_LUA's ARGV and in its reply (see below).
LIMIT_ARGS = 7
LIMIT_REPLY = 6

# ARGV: d (decisions), then per decision: cost, n (limits), then per limit: algo (0 gcra,
# 1 sliding), limit, window_us, burst, sub_windows, enforce (1/0), n_remote. KEYS: per
# decision, per limit its counter key followed by its n_remote remote-usage keys (multi-region
# counts published by peer regions: slot counts, plus "at"/"rate"; the peer's usage since "at"
# is taken as the larger of its average rate and what this region used meanwhile (see
# regions.py), so the sync lag does not let every region spend the same capacity; the script
# marks when it first saw a publication in the remote hash, "s0"/"b0").
# cost = 0 is a peek: evaluated as a 1-unit request, nothing is consumed.
# Reply: {now_us, then per decision: all_ok, then per limit: allowed, remaining, retry_us,
# used, slot, reset_us}. reset_us is how long until nothing is in use (the whole limit is
# available again) if nobody consumes: for gcra until the TAT reaches now, for a sliding
# window until the newest slot holding units has left the window.
#
# Per limit the script makes two Redis calls on the common path (GET + SET for gcra, HMGET +
# HINCRBY for sliding windows): a sliding-window key gets its TTL, and loses its expired
# slots, only on the first write into a new slot (the TTL runs to the end of the last window
# that slot counts in, so later writes into the same slot need not extend it). Per-limit
# state lives in scratch arrays reused across decisions rather than in a table per limit.
# Numbers passed to redis.call are formatted here ('%d'), not left to Redis's own number to
# string conversion, which may choose exponent notation for large round values.
CHECK_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local EPS = 1e-6
local out = {now}
local o = 1
local ki = 1
local ai = 2
local s_algo, s_key, s_ok, s_lim, s_win, s_retry, s_slot = {}, {}, {}, {}, {}, {}, {}
local s_a, s_b, s_c, s_d, s_field, s_new = {}, {}, {}, {}, {}, {}
for _ = 1, tonumber(ARGV[1]) do
  local cost_s = ARGV[ai]
  local cost = tonumber(cost_s)
  local n = tonumber(ARGV[ai + 1])
  ai = ai + 2
  local unit = cost
  if cost == 0 then unit = 1 end
  local all_ok = 1
  for i = 1, n do
    local algo = tonumber(ARGV[ai])
    local lim = tonumber(ARGV[ai + 1])
    local win = tonumber(ARGV[ai + 2])
    local enforce = tonumber(ARGV[ai + 5])
    local nrem = tonumber(ARGV[ai + 6])
    local key = KEYS[ki]
    local ok
    if algo == 0 then
      local T = win / lim
      local tau = tonumber(ARGV[ai + 3]) * T
      local tat = tonumber(redis.call('GET', key) or now)
      local base = now
      if tat > now then base = tat end
      local new_tat = base + unit * T
      ok = (new_tat - now) <= tau + EPS
      if ok then s_retry[i] = 0 else s_retry[i] = new_tat - now - tau end
      s_a[i] = new_tat
      s_b[i] = T
      s_c[i] = tau
      s_d[i] = base - now
      s_slot[i] = 0
    else
      local subs = tonumber(ARGV[ai + 4])
      local sw = win / subs
      local idx = math.floor(now / sw)
      local frac = (now - idx * sw) / sw
      local cnt = {}
      local fields = {}
      for k = 0, subs do fields[k + 1] = string.format('%d', idx - subs + k) end
      local vals = redis.call('HMGET', key, unpack(fields))
      for k = 1, subs + 1 do cnt[k] = tonumber(vals[k]) or 0 end
      local fresh = not vals[subs + 1]
      local loc = nil
      if nrem > 0 then
        loc = {}
        for k = 1, subs + 1 do loc[k] = cnt[k] end
      end
      for r = 1, nrem do
        local rkey = KEYS[ki + r]
        local rv = redis.call('HMGET', rkey, 'at', 'rate', 's0', 'b0', unpack(fields))
        for k = 1, subs + 1 do cnt[k] = cnt[k] + (tonumber(rv[k + 4]) or 0) end
        local at = tonumber(rv[1])
        local rate = tonumber(rv[2])
        if at and rate and now > at then
          -- The peer's use since it published: its average rate, or (when capacity frees in
          -- bursts) as much as this region used meanwhile, whichever is more. "Meanwhile" is
          -- counted from the publication time (the older part of its slot pro rata) and from
          -- when this region first saw the publication (exact: s0/b0 mark this region's
          -- current slot and its count then).
          local s0 = tonumber(rv[3])
          local b0 = tonumber(rv[4])
          if not s0 then
            s0 = idx
            b0 = loc[subs + 1]
            redis.call('HSET', rkey, 's0', string.format('%d', s0), 'b0', string.format('%d', b0))
          end
          local seen = 0
          if s0 >= idx - subs then
            for k = s0 - idx + subs + 1, subs + 1 do seen = seen + loc[k] end
            seen = seen - b0
          else
            for k = 1, subs + 1 do seen = seen + loc[k] end
          end
          local sa = math.floor(at / sw)
          local since = 0
          for k = math.max(sa + 1, idx - subs), idx do since = since + loc[k - idx + subs + 1] end
          if sa >= idx - subs and sa <= idx then
            since = since + loc[sa - idx + subs + 1] * ((sa + 1) * sw - at) / sw
          end
          cnt[subs + 1] = cnt[subs + 1] + math.max(rate * math.min(now - at, win), seen, since)
        end
      end
      s_new[i] = nil
      for k = subs + 1, 1, -1 do
        if cnt[k] > 0 then s_new[i] = idx - subs - 1 + k break end
      end
      local full = 0
      for k = 2, subs + 1 do full = full + cnt[k] end
      local est = full + cnt[1] * (1 - frac)
      ok = est + unit <= lim + EPS
      s_retry[i] = 0
      if not ok then
        local at = nil
        for step = 0, subs do
          local f = 0
          for k = step + 2, subs + 1 do f = f + cnt[k] end
          if f + unit <= lim + EPS then
            local old = cnt[step + 1]
            local g = 0
            if step == 0 then g = frac end
            local need = f + old + unit - lim
            if need > 0 and old > 0 then g = math.max(g, need / old) end
            at = (idx + step + g) * sw
            break
          end
        end
        if at == nil then at = (idx + subs + 1) * sw end
        s_retry[i] = at - now
      end
      s_a[i] = est
      s_b[i] = sw
      s_c[i] = subs
      s_d[i] = fresh
      s_slot[i] = idx
      s_field[i] = fields[subs + 1]
    end
    if enforce == 1 and not ok then all_ok = 0 end
    s_algo[i] = algo
    s_key[i] = key
    s_ok[i] = ok
    s_lim[i] = lim
    s_win[i] = win
    ai = ai + 7
    ki = ki + 1 + nrem
  end
  out[o + 1] = all_ok
  o = o + 1
  local consume_all = cost > 0 and all_ok == 1
  for i = 1, n do
    local ok = s_ok[i]
    local consume = consume_all and ok
    local remaining
    local used
    local reset
    if s_algo[i] == 0 then
      local T = s_b[i]
      local in_use = s_d[i]
      if consume then
        in_use = s_a[i] - now
        redis.call('SET', s_key[i], string.format('%.3f', s_a[i]),
          'PX', string.format('%d', math.ceil(in_use / 1000) + 1))
      end
      remaining = math.floor((s_c[i] - in_use) / T + EPS)
      used = math.ceil(in_use / T - EPS)
      reset = in_use
    else
      local est = s_a[i]
      if consume then
        local key = s_key[i]
        local slot = s_slot[i]
        est = est + cost
        redis.call('HINCRBY', key, s_field[i], cost_s)
        if s_d[i] then
          local sw = s_b[i]
          local subs = s_c[i]
          local ttl = math.ceil(((slot + 1) * sw + s_win[i] - now) / 1000) + 1
          redis.call('PEXPIRE', key, string.format('%d', ttl))
          if redis.call('HLEN', key) > subs + 1 then
            local oldest = slot - subs
            for _, f in ipairs(redis.call('HKEYS', key)) do
              if tonumber(f) < oldest then redis.call('HDEL', key, f) end
            end
          end
        end
      end
      remaining = math.floor(s_lim[i] - est + EPS)
      used = math.ceil(est - EPS)
      local newest = s_new[i]
      if consume then newest = s_slot[i] end
      reset = 0
      if newest then reset = (newest + s_c[i] + 1) * s_b[i] - now end
    end
    if remaining < 0 then remaining = 0 end
    if used < 0 then used = 0 end
    if ok then out[o + 1] = 1 else out[o + 1] = 0 end
    out[o + 2] = remaining
    out[o + 3] = math.ceil(s_retry[i])
    out[o + 4] = used
    out[o + 5] = s_slot[i]
    if reset < 0 then reset = 0 end
    out[o + 6] = math.ceil(reset)
    o = o + 6
  end
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


# A ``CheckBatcher`` future's result: the reply of the script call that carried the
# submission, and the index in it of the submission's first value (its first ``all_ok``).
CheckReply = tuple[list[Any], int]


@dataclass(slots=True)
class _Submission:
    keys: list[bytes]
    nkeys: int
    args: list[bytes]
    nargs: int
    decisions: int
    reply_len: int
    future: asyncio.Future[CheckReply]


RATE_WINDOW_S = 0.01  # how often CheckBatcher re-estimates its arrival rate
# Submissions wait only while at least this many more are expected within the wait: then a
# wait saves at least two script calls and round trips, and below that rate it would mostly
# add latency for nothing.
EXPECTED_COMPANY = 2


class CheckBatcher:
    """Runs CHECK_LUA on one Redis, merging the decisions that wait for it into one call.

    ``submit`` queues one or more decisions (their KEYS and ARGV as CHECK_LUA takes them,
    RESP-encoded, without the leading decision count) and returns a future. When a call is
    in flight, what is queued waits for its reply and then goes out together with everything
    queued meanwhile (in calls of at most ``max_decisions``, pipelined), like a group commit.
    Otherwise it is sent at the end of the event loop's turn, with whatever the turn's other
    calls submit; or, when submissions have lately come closer together than
    ``batch_wait_us`` (a busy server, whose unary checks arrive one per turn), once that wait
    has passed, with the checks that came meanwhile (Gubernator's BatchWait, made adaptive).
    So a lone check waits for no one, and under load concurrent
    checks share one script call and one round trip, which is what a check mostly costs the
    service and the shard. Replies are handled in the connection's callbacks, so a check
    costs one future and no task.

    Errors reach every future of the failed call: an unreachable shard (the caller trips the
    breaker and falls back; what was queued behind the call fails with it rather than wait for
    a second timeout), or a script error, after which decisions earlier in that call may have
    consumed (which errs toward denying). ``NOSCRIPT`` reloads and retries once.
    """

    def __init__(
        self,
        client: Redis,
        max_decisions: int = 256,
        batch_wait_us: int = 0,
        decision_timeout_us: int = 0,
    ) -> None:
        self._client = client
        self._wait_s = batch_wait_us / 1e6
        # The arrival rate, re-estimated every RATE_WINDOW_S: busy when EXPECTED_COMPANY more
        # submissions are expected within the wait.
        self._since = -math.inf
        self._count = 0
        self._busy = False
        # A call's deadline grows with the decisions it carries (see redis_client._Resp).
        self._conn = hot_path_connection(client, decision_timeout_us / 1e6)
        self._head = b"$7\r\nEVALSHA\r\n" + resp(CHECK_SCRIPT.sha)
        self._load = b"*3\r\n" + resp("SCRIPT", "LOAD", CHECK_SCRIPT.source)
        self._max = max_decisions
        self._pending: list[_Submission] = []
        self._in_flight = 0  # calls sent and not answered yet
        self._connecting = False
        self._flush_soon = False  # a flush is scheduled for the end of this loop turn
        self._tasks: set[asyncio.Task[None]] = set()  # connecting, reloading the script

    @property
    def client(self) -> Redis:
        return self._client

    @property
    def busy(self) -> bool:
        """Whether submissions now wait for company (the last rate estimate was high)."""
        return self._busy

    def submit(
        self,
        keys: list[bytes],
        nkeys: int,
        args: list[bytes],
        nargs: int,
        decisions: int,
        reply_len: int,
    ) -> asyncio.Future[CheckReply]:
        """Queue ``decisions`` decisions: ``nkeys`` KEYS and ``nargs`` ARGV in RESP, whose
        replies take ``reply_len`` values in all."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CheckReply] = loop.create_future()
        self._pending.append(_Submission(keys, nkeys, args, nargs, decisions, reply_len, future))
        now = loop.time()
        self._count += 1
        if now - self._since >= RATE_WINDOW_S:
            self._busy = self._count * self._wait_s >= EXPECTED_COMPANY * (now - self._since)
            self._since, self._count = now, 0
        if not (self._in_flight or self._flush_soon):
            self._flush_soon = True
            if self._busy:
                # Busy: more submissions are expected within the wait, so wait for them.
                loop.call_later(self._wait_s, self._flush_queued)
            else:
                # Sent at the end of this turn of the event loop, with what the turn's other
                # calls submit meanwhile.
                loop.call_soon(self._flush_queued)
        return future

    async def close(self) -> None:
        """Let the calls in flight finish, then close the connection."""
        for _ in range(100):
            if not (self._in_flight or self._tasks):
                break
            await asyncio.sleep(0.01)
        self._conn.close()

    def _flush_queued(self) -> None:
        self._flush_soon = False
        if self._pending and not self._in_flight:
            self._flush()

    def _flush(self) -> None:
        """Send what is queued (nothing is in flight)."""
        if not self._conn.connected:
            if not self._connecting:
                self._connecting = True
                self._spawn(self._connect())
            return
        pending, self._pending = self._pending, []
        start = 0
        while start < len(pending):
            count = 0
            end = start
            while end < len(pending) and (not count or count + pending[end].decisions <= self._max):
                count += pending[end].decisions
                end += 1
            command, subs = self._call(pending[start:end], count)
            self._in_flight += 1
            self._conn.send(command, _Call(self, command, subs, count).on_reply, count)
            start = end

    def _call(
        self, subs: list[_Submission], decisions: int
    ) -> tuple[bytes, list[tuple[_Submission, int]]]:
        """One EVALSHA for ``subs``, and where each one's values start in its reply."""
        if len(subs) == 1:  # the usual case under light load: one check
            sub = subs[0]
            count = 4 + sub.nkeys + sub.nargs
            parts = [b"*%d\r\n" % count, self._head, resp_int(sub.nkeys), *sub.keys]
            parts += (resp_int(decisions), *sub.args)
            return b"".join(parts), [(sub, 1)]
        nkeys = sum(sub.nkeys for sub in subs)
        nargs = sum(sub.nargs for sub in subs)
        parts = [b"*%d\r\n" % (4 + nkeys + nargs), self._head, resp_int(nkeys)]
        for sub in subs:
            parts += sub.keys
        parts.append(resp_int(decisions))
        offsets = []
        at = 1  # reply[0] is the script's clock
        for sub in subs:
            parts += sub.args
            offsets.append((sub, at))
            at += sub.reply_len
        return b"".join(parts), offsets

    def _answered(self, subs: list[tuple[_Submission, int]], reply: Any) -> None:
        self._in_flight -= 1
        if isinstance(reply, SHARD_UNAVAILABLE_ERRORS):
            # The shard failed: so does what queued behind this call (the caller falls back).
            pending, self._pending = self._pending, []
            _settle([sub for sub, _ in subs], reply)
            _settle(pending, reply)
        elif isinstance(reply, BaseException):
            _settle([sub for sub, _ in subs], reply)
        else:
            for sub, at in subs:
                if not sub.future.done():  # else the caller went away
                    sub.future.set_result((reply, at))
        if self._pending and not self._in_flight:
            self._flush()

    async def _connect(self) -> None:
        try:
            await self._conn.connect()
        except Exception as exc:
            pending, self._pending = self._pending, []
            _settle(pending, exc)
        finally:
            self._connecting = False
        if self._pending and not self._in_flight:
            self._flush()

    async def _reload(self, call: _Call) -> None:
        """Load the script (the shard restarted or was flushed) and resend ``call``."""
        try:
            (loaded,) = await self._conn.roundtrip([self._load])
        except Exception as exc:
            loaded = exc
        if isinstance(loaded, Exception):
            self._answered(call.subs, loaded)
        else:
            call.retried = True
            self._conn.send(call.command, call.on_reply, call.decisions)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@dataclass(slots=True)
class _Call:
    """One script call in flight."""

    batcher: CheckBatcher
    command: bytes
    subs: list[tuple[_Submission, int]]
    decisions: int
    retried: bool = False

    def on_reply(self, reply: Any) -> None:
        if isinstance(reply, NoScriptError) and not self.retried:
            self.batcher._spawn(self.batcher._reload(self))
        else:
            self.batcher._answered(self.subs, reply)


def _settle(pending: list[_Submission], error: BaseException) -> None:
    for sub in pending:
        if not sub.future.done():
            sub.future.set_exception(error)
