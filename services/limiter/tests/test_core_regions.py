"""Region-aware global limits: two regions (two limiters, each with its own redis-server)
hammered at once admit, together, within 5% of the global limit per window at steady state,
for every window configuration (one sub-window, or many: with several, freed capacity arrives
in bursts one window after the bursts that used it, which a peer extrapolated at its average
rate used to miss, up to 1.4x the limit)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from mc_limiter.limiter import Limiter

MakeLimiter = Callable[..., Awaitable[Limiter]]

LIMIT = 400
WINDOW_MS = 2000


def global_rule(sub_windows: int = 1) -> dict[str, Any]:
    return {
        "id": "global_api",
        "scope": "tenant",
        "multi_region": True,
        "limits": [
            {
                "name": "w",
                "algorithm": "sliding_window",
                "limit": LIMIT,
                "window_ms": WINDOW_MS,
                "sub_windows": sub_windows,
            }
        ],
    }


@pytest.mark.parametrize("sub_windows", [1, 4, 10, 24])
async def test_two_regions_stay_within_five_percent_of_the_global_limit(
    make_limiter: MakeLimiter, redis_servers: Callable[[], Any], sub_windows: int
) -> None:
    east, west = redis_servers(), redis_servers()
    regions = {
        "east": await make_limiter(
            [east.url],
            peers=[("west", [west.url])],
            timeout_ms=1000,
            options={"region": "east", "region_sync_ms": 100},
        ),
        "west": await make_limiter(
            [west.url],
            peers=[("east", [east.url])],
            timeout_ms=1000,
            options={"region": "west", "region_sync_ms": 100},
        ),
    }
    for limiter in regions.values():
        await limiter.put_rule(global_rule(sub_windows), actor="t")
    # Past the cold start (documented: before a region has seen a peer's first publication of
    # a counter, each may admit the whole limit): every region has used and published it.
    for limiter in regions.values():
        assert (await limiter.check("acme", "tok", "jobs")).allowed
    for limiter in regions.values():
        await limiter.sync_regions()

    # Both regions run on this machine, so their Redis clocks agree on window boundaries.
    first_boundary = math.ceil(time.time() * 1000 / WINDOW_MS) * WINDOW_MS
    steady = [first_boundary // WINDOW_MS + w for w in (1, 2, 3)]
    stop_at_ms = first_boundary + 4 * WINDOW_MS
    per_window: dict[int, int] = defaultdict(int)
    per_region: dict[str, int] = defaultdict(int)
    degraded = 0

    async def hammer(name: str, limiter: Limiter) -> None:
        nonlocal degraded
        while time.time() * 1000 < stop_at_ms:
            decision = await limiter.check("acme", "tok", "jobs")
            degraded += decision.degraded
            if decision.allowed:
                per_window[decision.now_ms // WINDOW_MS] += 1
                per_region[name] += 1

    await asyncio.gather(*(hammer(n, lim) for n, lim in regions.items() for _ in range(3)))
    assert degraded == 0
    assert all(per_region[name] > LIMIT / 2 for name in regions), per_region
    totals = [per_window[w] for w in steady]
    # Never over the limit by more than the documented 5%; how close to it the regions come
    # depends on how fast this machine serves them, so that is not asserted.
    assert all(t <= 1.05 * LIMIT for t in totals), (totals, dict(per_window))


async def test_region_without_peer_traffic_keeps_the_whole_limit(
    make_limiter: MakeLimiter, redis_servers: Callable[[], Any]
) -> None:
    east, west = redis_servers(), redis_servers()
    limiter = await make_limiter(
        [east.url], peers=[("west", [west.url])], options={"region": "east"}
    )
    await limiter.put_rule(global_rule(), actor="t")
    decisions = await asyncio.gather(*(limiter.check("acme", "", "k", 100) for _ in range(5)))
    assert [d.allowed for d in decisions].count(True) == 4
    await limiter.sync_regions()
    # The peer now holds this region's usage under the remote key.
    async with Redis.from_url(west.url) as peer:
        peer_keys = [k async for k in peer.scan_iter(match="*:rm:east")]
        assert len(peer_keys) == 1
        fields = await peer.hgetall(peer_keys[0])
    slot_counts = [int(v) for k, v in fields.items() if k not in (b"at", b"rate")]
    assert sum(slot_counts) == LIMIT
