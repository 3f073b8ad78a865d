"""The shard circuit breaker never declares a healthy but busy shard down.

Under CheckBatch load against a healthy Redis the breaker used to trip (3-9 times in 70 s,
about 1% of decisions made in degraded mode): every pipelined script call had the same fixed
100 ms deadline from its send, however much work was queued ahead of it. Deadlines now follow
the work sent (a budget per decision on top of the socket timeout, counted from when the work
ahead is expected to be done) and any reply from the shard proves it alive. A real
redis-server, the production socket timeout (100 ms), and CheckBatch at the largest size."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from limiter_support import gcra, sliding
from prometheus_client import CollectorRegistry

from mc_limiter.decisions import CheckRequest
from mc_limiter.limiter import Limiter
from mc_limiter.metrics import LimiterMetrics

MakeLimiter = Callable[..., Awaitable[Limiter]]
TENANTS = [f"busy-{i}" for i in range(50)]


async def test_a_busy_shard_is_never_declared_down(
    make_limiter: MakeLimiter, redis_servers: Callable[[], Any]
) -> None:
    server = redis_servers()
    metrics = LimiterMetrics(CollectorRegistry())
    limiter = await make_limiter([server.url], timeout_ms=100, metrics=metrics)
    await limiter.put_rule(
        {
            "id": "busy",
            "scope": "tenant",
            "limits": [gcra("per-second", 1_000_000, 1000), sliding("per-day", 10**9, 86_400_000)],
        },
        actor="t",
    )
    batch = [CheckRequest(TENANTS[i % len(TENANTS)], "", "k") for i in range(1000)]
    degraded = 0
    for _ in range(4):
        rounds = await asyncio.gather(*(limiter.check_batch(batch) for _ in range(8)))
        degraded += sum(d.degraded for decisions in rounds for d in decisions)
    trips = metrics.registry.get_sample_value("mc_rl_breaker_trips_total", {"shard": "s0"})
    assert (degraded, trips) == (0, 0)

    # A hung shard is still found: the budget follows the work actually sent.
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        stalled = await limiter.check_batch(batch[:10])
        assert all(d.degraded for d in stalled)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    trips = metrics.registry.get_sample_value("mc_rl_breaker_trips_total", {"shard": "s0"})
    assert trips == 1
