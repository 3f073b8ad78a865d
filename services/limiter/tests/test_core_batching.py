"""Batched script calls: many decisions per EVALSHA (CheckBatch, and concurrent unary checks
merged by the shard's CheckBatcher), across shards, with refunds, NOSCRIPT reloads, expiry of
sliding-window slots, and the lean connection's failure handling."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from limiter_support import gcra, sliding
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mc_limiter.decisions import CheckRequest, LimitRef, Source
from mc_limiter.errors import CostExceedsCapacityError
from mc_limiter.limiter import Limiter
from mc_limiter.redis_client import PipelinedConnection, resp

MakeLimiter = Callable[..., Awaitable[Limiter]]


async def evalsha_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_batch_spanning_shards_decides_each_check_in_order(
    make_limiter: MakeLimiter, redis_servers: Callable[[], Any], shared_redis: Any
) -> None:
    servers = [redis_servers(), redis_servers()]
    limiter = await make_limiter([s.url for s in servers], config=shared_redis)
    await limiter.put_rule(
        {"id": "r", "scope": "tenant", "limits": [gcra("g", 3), sliding("s", 5)]}, actor="t"
    )
    tenants = [f"tenant-{i}" for i in range(40)]
    assert {limiter.shard_for(t).name for t in tenants} == {"s0", "s1"}
    requests = [CheckRequest(t, "", "k") for t in tenants for _ in range(4)]
    decisions = await limiter.check_batch(requests)
    for i, tenant in enumerate(tenants):
        mine = decisions[4 * i : 4 * i + 4]
        assert [d.allowed for d in mine] == [True, True, True, False], tenant
        assert [d.results[0].used for d in mine] == [1, 2, 3, 3]
        assert [d.results[1].used for d in mine] == [1, 2, 3, 3], "all or none per check"
        assert mine[3].deciding == LimitRef("r", "g")
        assert not any(d.degraded for d in mine)
    # Each shard got its checks in few script calls, not one per check.
    for server in servers:
        probe = Redis.from_url(server.url)
        try:
            assert 1 <= await evalsha_calls(probe) <= 4
        finally:
            await probe.aclose()


async def test_batch_with_global_pool_refunds_tenant_counters(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    await limiter.put_rule({"id": "pool", "scope": "global", "limits": [gcra("all", 3)]}, actor="t")
    await limiter.put_rule(
        {"id": "per_tenant", "scope": "tenant", "limits": [sliding("t", 10)]}, actor="t"
    )
    # Decisions spanning two tags run concurrently within a batch, so one per batch here.
    (first,) = await limiter.check_batch([CheckRequest("acme", "", "k", 2)])
    (denied,) = await limiter.check_batch([CheckRequest("zeta", "", "k", 2)])
    refunded = await limiter.usage("zeta", "", "k")
    assert {r.limit_name: r.used for r in refunded.results} == {"all": 2, "t": 0}
    (third,) = await limiter.check_batch([CheckRequest("zeta", "", "k", 1)])
    (peek,) = await limiter.check_batch([CheckRequest("zeta", "", "k", 0)])
    assert first.allowed and not denied.allowed and third.allowed and not peek.allowed
    assert denied.deciding == LimitRef("pool", "all")
    assert {r.limit_name: r.used for r in peek.results} == {"all": 3, "t": 1}


async def test_concurrent_checks_share_script_calls(
    make_limiter: MakeLimiter, redis_servers: Callable[[], Any], shared_redis: Any
) -> None:
    server = redis_servers()
    limiter = await make_limiter([server.url], config=shared_redis)
    await limiter.put_rule(
        {"id": "r", "scope": "key", "limits": [gcra("g", 30), sliding("s", 100)]}, actor="t"
    )
    probe = Redis.from_url(server.url)
    try:
        before = await evalsha_calls(probe)
        decisions = await asyncio.gather(*(limiter.check("acme", "", "k") for _ in range(50)))
        calls = await evalsha_calls(probe) - before
    finally:
        await probe.aclose()
    assert sum(d.allowed for d in decisions) == 30
    assert sorted(d.results[0].used for d in decisions if d.allowed) == list(range(1, 31))
    # The first check goes out alone; the rest queue behind it and share the next call.
    assert calls <= 3, calls


async def test_checks_arriving_one_by_one_wait_for_company_when_busy(
    make_limiter: MakeLimiter, redis_servers: Callable[[], Any], shared_redis: Any
) -> None:
    # Like a busy gRPC server: checks start one at a time, a little apart, never in one turn.
    server = redis_servers()
    limiter = await make_limiter(
        [server.url], config=shared_redis, options={"batch_wait_us": 20_000}
    )
    await limiter.put_rule({"id": "r", "scope": "key", "limits": [gcra("g", 30)]}, actor="t")
    probe = Redis.from_url(server.url)
    try:
        before = await evalsha_calls(probe)
        checks = []
        for _ in range(60):
            checks.append(asyncio.ensure_future(limiter.check("acme", "", "k")))
            await asyncio.sleep(0.001)  # a rate far above one per wait: busy
        decisions = await asyncio.gather(*checks)
        calls = await evalsha_calls(probe) - before
    finally:
        await probe.aclose()
    # Decided in arrival order, all or nothing as ever: exactly the first 30 are admitted.
    assert [d.allowed for d in decisions] == [True] * 30 + [False] * 30
    assert [d.results[0].used for d in decisions[:30]] == list(range(1, 31))
    # Until the rate is known (one estimate window) checks go out alone; then they share calls.
    assert calls <= 30, calls


async def test_sparse_checks_do_not_wait(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(options={"batch_wait_us": 2_000})  # busy from 1,000 checks/s
    await limiter.put_rule({"id": "r", "scope": "key", "limits": [gcra("g", 200)]}, actor="t")
    for _ in range(4):  # 20 checks/s
        assert (await limiter.check("acme", "", "k")).allowed
        batcher = limiter.executor.batcher_for(limiter.router.get("s0"))  # the shard's batcher
        assert not batcher.busy
        await asyncio.sleep(0.05)
    # A burst of 100 in 20 ms (5,000/s; busy even if the sleep took 100 ms): from the next
    # estimate on, checks wait for company.
    burst = [asyncio.ensure_future(limiter.check("acme", "", "k")) for _ in range(100)]
    await asyncio.sleep(0.02)
    burst.append(asyncio.ensure_future(limiter.check("acme", "", "k")))
    assert all(d.allowed for d in await asyncio.gather(*burst))
    assert batcher.busy


async def test_noscript_reloads_batched_and_merged_calls(
    make_limiter: MakeLimiter, redis_servers: Callable[[], Any], shared_redis: Any
) -> None:
    server = redis_servers()
    limiter = await make_limiter([server.url], config=shared_redis)
    await limiter.put_rule({"id": "r", "scope": "key", "limits": [gcra("g", 100)]}, actor="t")
    client = limiter.router.shards[0].client
    await client.script_flush()
    # More decisions than one script call takes: several calls, pipelined, all reloaded.
    batch = await limiter.check_batch([CheckRequest(f"t{i % 7}", "", "k") for i in range(300)])
    assert all(d.allowed and not d.degraded for d in batch)
    await client.script_flush()
    merged = await asyncio.gather(*(limiter.check("t0", "", "k") for _ in range(20)))
    assert all(d.allowed and not d.degraded for d in merged)
    assert sorted(d.results[0].used for d in merged) == list(range(44, 64))


async def test_sliding_window_keys_expire_and_drop_old_slots(
    make_limiter: MakeLimiter, prefix: str, shared_redis: Redis
) -> None:
    limiter = await make_limiter()
    window_ms = 400
    await limiter.put_rule(
        {"id": "r", "scope": "key", "limits": [sliding("s", 1000, window_ms, sub_windows=4)]},
        actor="t",
    )
    for _ in range(8):  # spans more than a window: old slots must go
        assert (await limiter.check("acme", "", "k")).allowed
        await asyncio.sleep(0.07)
    [key] = [k async for k in shared_redis.scan_iter(match=f"{prefix}:c:*", count=10_000)]
    ttl = await shared_redis.pttl(key)
    assert 0 < ttl <= window_ms + window_ms // 4 + 2
    assert await shared_redis.hlen(key) <= 4 + 1


async def test_static_plans_still_check_capacity_per_request(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    await limiter.put_rule({"id": "r", "scope": "key", "limits": [gcra("g", 5)]}, actor="t")
    assert (await limiter.check("acme", "", "k", 5)).allowed
    with pytest.raises(CostExceedsCapacityError):
        await limiter.check("acme", "", "k", 6)
    with pytest.raises(CostExceedsCapacityError) as info:
        await limiter.check_batch([CheckRequest("acme", "", "k"), CheckRequest("acme", "", "k", 9)])
    assert info.value.request_index == 1
    await limiter.set_throttle("acme", "moderate", actor="ops")  # capacity 5 -> 2
    with pytest.raises(CostExceedsCapacityError):
        await limiter.check("acme", "", "other", 3)


async def test_merged_checks_fall_back_together_when_the_shard_dies(
    make_limiter: MakeLimiter, redis_servers: Callable[[], Any], shared_redis: Any
) -> None:
    server = redis_servers()
    limiter = await make_limiter(
        [server.url], config=shared_redis, timeout_ms=250, options={"probe_interval_ms": 50}
    )
    await limiter.put_rule({"id": "r", "scope": "key", "limits": [gcra("g", 100)]}, actor="t")
    assert not (await limiter.check("acme", "", "k")).degraded
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        decisions = await asyncio.gather(*(limiter.check("acme", "", "k") for _ in range(10)))
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert all(d.degraded and d.results[0].source is Source.FALLBACK for d in decisions)
    for _ in range(100):
        decision = await limiter.check("acme", "", "k", 0)
        if not decision.degraded:
            break
        await asyncio.sleep(0.05)
    assert not decision.degraded, "the merged calls reconnect once the shard answers"


async def test_pipelined_connection_errors_and_reconnects(
    redis_servers: Callable[[], Any],
) -> None:
    server = redis_servers()
    conn = PipelinedConnection("127.0.0.1", server.port, timeout=0.25)
    try:
        ping = b"*1\r\n" + resp("PING")
        unknown = b"*3\r\n" + resp("EVALSHA", "0" * 40, 0)
        replies = await conn.roundtrip([ping, unknown, ping])
        assert replies[0] == b"PONG" and replies[2] == b"PONG"
        assert isinstance(replies[1], NoScriptError)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            hung = await conn.roundtrip([ping, ping])
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert all(isinstance(r, RedisTimeoutError) for r in hung)
        assert await conn.roundtrip([ping]) == [b"PONG"], "reconnects after a timeout"
        server.kill()
        lost = await conn.roundtrip([ping])
        assert isinstance(lost[0], RedisConnectionError)
        with pytest.raises(RedisConnectionError):
            await conn.roundtrip([ping])
        server.start()
        assert await conn.roundtrip([ping]) == [b"PONG"]
    finally:
        conn.close()
