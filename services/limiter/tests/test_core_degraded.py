"""Degraded mode: a shard dies or hangs, decisions continue from local fallback buckets (or the
rule's failure mode) without errors, and return to Redis when the shard comes back."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from mc_limiter.decisions import Source
from mc_limiter.limiter import Limiter
from mc_limiter.metrics import LimiterMetrics

MakeLimiter = Callable[..., Awaitable[Limiter]]
HOUR_MS = 3_600_000


def tenant_on(limiter: Limiter, shard_name: str) -> str:
    return next(
        t for t in (f"tenant-{i}" for i in range(1000)) if limiter.shard_for(t).name == shard_name
    )


async def setup(
    make_limiter: MakeLimiter, urls: list[str], shared_redis: Any, timeout_ms: int
) -> Limiter:
    limiter = await make_limiter(
        urls,
        config=shared_redis,
        timeout_ms=timeout_ms,
        metrics=LimiterMetrics(CollectorRegistry()),
        options={"fallback_share": 0.5, "probe_interval_ms": 100},
    )
    limit = {"name": "l", "limit": 10, "window_ms": HOUR_MS}
    await limiter.put_rule(
        {"id": "fb", "scope": "key", "match": {"key": "fb"}, "limits": [limit]}, actor="t"
    )
    await limiter.put_rule(
        {
            "id": "closed",
            "scope": "key",
            "match": {"key": "closed"},
            "limits": [limit],
            "local_fallback": False,
            "failure_mode": "fail_closed",
        },
        actor="t",
    )
    await limiter.put_rule(
        {
            "id": "open",
            "scope": "key",
            "match": {"key": "open"},
            "limits": [limit],
            "local_fallback": False,
            "failure_mode": "fail_open",
        },
        actor="t",
    )
    return limiter


def degraded_gauge(limiter: Limiter, shard: str) -> float | None:
    value: float | None = limiter.metrics.registry.get_sample_value(
        "mc_rl_degraded", {"shard": shard}
    )
    return value


async def wait_for_redis(limiter: Limiter, tenant: str, key: str, seconds: float = 5.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        decision = await limiter.check(tenant, "tok", key, 0)
        if not decision.degraded:
            return decision
        await asyncio.sleep(0.05)
    raise AssertionError("shard did not come back")


async def test_killed_shard_falls_back_within_a_second_and_recovers(
    make_limiter: MakeLimiter, redis_servers: Callable[[], Any], shared_redis: Any
) -> None:
    servers = [redis_servers(), redis_servers()]
    # A killed server refuses connections at once; the timeout only guards the survivor.
    limiter = await setup(make_limiter, [s.url for s in servers], shared_redis, 500)
    victim = tenant_on(limiter, "s1")
    survivor = tenant_on(limiter, "s0")
    for _ in range(2):
        assert (await limiter.check(victim, "tok", "fb")).results[0].source is Source.REDIS

    servers[1].kill()
    first = await limiter.check(victim, "tok", "fb")  # the very next check falls back
    assert first.allowed and first.degraded
    assert first.results[0].source is Source.FALLBACK
    assert degraded_gauge(limiter, "s1") == 1
    # The fallback bucket holds this replica's share: 10 * 0.5 = 5 (one already taken).
    rest = [await limiter.check(victim, "tok", "fb") for _ in range(6)]
    assert [d.allowed for d in rest] == [True] * 4 + [False] * 2
    assert rest[-1].retry_after_ms > 0
    closed = await limiter.check(victim, "tok", "closed")
    assert not closed.allowed and closed.results[0].source is Source.FAIL_CLOSED
    assert closed.retry_after_ms == 100
    opened = await limiter.check(victim, "tok", "open")
    assert opened.allowed and opened.results[0].source is Source.FAIL_OPEN
    other = await limiter.check(survivor, "tok", "fb")
    assert not other.degraded and other.results[0].source is Source.REDIS

    servers[1].start()  # same port, empty
    back = await wait_for_redis(limiter, victim, "fb")
    assert back.results[0].used == 0, "counters restart empty on the restarted server"
    assert (await limiter.check(victim, "tok", "fb")).results[0].source is Source.REDIS
    assert degraded_gauge(limiter, "s1") == 0


async def test_hung_shard_times_out_into_fallback(
    make_limiter: MakeLimiter, redis_servers: Callable[[], Any], shared_redis: Any
) -> None:
    servers = [redis_servers(), redis_servers()]
    limiter = await setup(make_limiter, [s.url for s in servers], shared_redis, 250)
    victim = tenant_on(limiter, "s0")
    assert not (await limiter.check(victim, "tok", "fb")).degraded
    pid = servers[0].proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        decisions = [await limiter.check(victim, "tok", "fb") for _ in range(3)]
        assert all(d.degraded and d.allowed for d in decisions)  # each bounded by the timeout
    finally:
        os.kill(pid, signal.SIGCONT)
    back = await wait_for_redis(limiter, victim, "fb")
    # The check that timed out was still queued on the hung server and ran after SIGCONT:
    # counted in Redis as well as in the fallback, which errs toward denying.
    assert back.results[0].used in (1, 2)
