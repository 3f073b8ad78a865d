"""Consistent hashing over several redis-server processes: even spread, ~1/N moves on growth."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from mc_limiter.decisions import CheckRequest
from mc_limiter.limiter import Limiter
from mc_limiter.sharding import HashRing, Shard

MakeLimiter = Callable[..., Awaitable[Limiter]]


def test_ring_spreads_evenly_and_moves_about_one_nth() -> None:
    ring = HashRing(["a", "b", "c"], vnodes=160)
    tags = [f"t:tenant-{i}" for i in range(30_000)]
    before = {tag: ring.node_for(tag) for tag in tags}
    shares = Counter(before.values())
    assert all(0.26 <= n / len(tags) <= 0.41 for n in shares.values()), shares
    ring.add("d")
    after = {tag: ring.node_for(tag) for tag in tags}
    moved = [tag for tag in tags if before[tag] != after[tag]]
    assert 0.18 <= len(moved) / len(tags) <= 0.32
    assert all(after[tag] == "d" for tag in moved), "only moves onto the new node"
    ring.remove("d")
    assert {tag: ring.node_for(tag) for tag in tags} == before


async def test_counters_spread_over_redis_servers_and_survive_growth(
    make_limiter: MakeLimiter, redis_servers: Callable[[], Any], shared_redis: Any, prefix: str
) -> None:
    servers = [redis_servers() for _ in range(3)]
    limiter = await make_limiter([s.url for s in servers], config=shared_redis)
    await limiter.put_rule(
        {"id": "r", "scope": "tenant", "limits": [{"name": "l", "limit": 10, "window_ms": 60_000}]},
        actor="t",
    )
    tenants = [f"tenant-{i}" for i in range(600)]
    await limiter.check_batch([CheckRequest(t, "", "k") for t in tenants])

    async def counter_keys(shard: Shard) -> int:
        return len([k async for k in shard.client.scan_iter(match=f"{prefix}:c:*", count=1000)])

    counts = [await counter_keys(shard) for shard in limiter.router.shards]
    assert sum(counts) == len(tenants)
    assert all(n >= 0.2 * len(tenants) for n in counts), counts

    owner_before = {t: limiter.shard_for(t).name for t in tenants}
    new_server = redis_servers()
    limiter.add_shard(Shard.from_url("s3", new_server.url))
    moved = {t for t in tenants if limiter.shard_for(t).name != owner_before[t]}
    assert 0.15 <= len(moved) / len(tenants) <= 0.35
    assert all(limiter.shard_for(t).name == "s3" for t in moved)

    second = await limiter.check_batch([CheckRequest(t, "", "k") for t in tenants])
    for tenant, decision in zip(tenants, second, strict=True):
        expected_used = 1 if tenant in moved else 2
        assert decision.results[0].used == expected_used
        assert not decision.degraded
    assert await counter_keys(limiter.router.get("s3")) == len(moved)
    await limiter.router.get("s3").client.aclose()
