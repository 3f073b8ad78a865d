"""Decisions against the machine's Redis: multi-limit atomicity, peeks, shadow mode, gradual
enforcement, throttle levels, retry advice, batches, deny records and metrics."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from limiter_support import gcra, sliding
from prometheus_client import CollectorRegistry

from mc_limiter.decisions import CheckRequest, LimitRef
from mc_limiter.denials import MemoryDenySink
from mc_limiter.limiter import Limiter
from mc_limiter.metrics import LimiterMetrics

MakeLimiter = Callable[..., Awaitable[Limiter]]


def rule(rule_id: str, limits: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": rule_id, "scope": "key", "limits": limits, **extra}


def used(decision: Any) -> dict[str, int]:
    return {r.limit_name: r.used for r in decision.results}


async def test_limits_on_one_key_are_consumed_all_or_none(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    await limiter.put_rule(
        rule("jobs", [gcra("burst", 3), sliding("hourly", 5, sub_windows=4)]), actor="t"
    )
    await limiter.put_rule(
        {"id": "tenant_total", "scope": "tenant", "limits": [sliding("all", 100)]}, actor="t"
    )
    first = await limiter.check("acme", "tok", "k", 2)
    assert first.allowed and first.remaining == 1
    assert first.deciding == LimitRef("jobs", "burst")
    second = await limiter.check("acme", "tok", "k", 2)
    assert not second.allowed and second.retry_after_ms > 0
    assert second.deciding == LimitRef("jobs", "burst")
    assert {r.limit_name: r.allowed for r in second.results} == {
        "burst": False,
        "hourly": True,
        "all": True,
    }
    assert used(await limiter.usage("acme", "tok", "k")) == {"burst": 2, "hourly": 2, "all": 2}
    third = await limiter.check("acme", "tok", "k", 1)
    assert third.allowed and third.remaining == 0
    assert used(await limiter.usage("acme", "tok", "k")) == {"burst": 3, "hourly": 3, "all": 3}


async def test_global_pool_on_its_own_tag_refunds_tenant_counters(
    make_limiter: MakeLimiter,
) -> None:
    limiter = await make_limiter()
    await limiter.put_rule({"id": "pool", "scope": "global", "limits": [gcra("all", 3)]}, actor="t")
    await limiter.put_rule(
        {"id": "per_tenant", "scope": "tenant", "limits": [sliding("t", 10)]}, actor="t"
    )
    assert (await limiter.check("acme", "", "k", 2)).allowed
    denied = await limiter.check("zeta", "", "k", 2)
    assert not denied.allowed and denied.deciding == LimitRef("pool", "all")
    assert used(await limiter.usage("zeta", "", "k")) == {"all": 2, "t": 0}
    assert (await limiter.check("zeta", "", "k", 1)).allowed
    assert used(await limiter.usage("zeta", "", "k")) == {"all": 3, "t": 1}


async def test_cost_zero_peeks_without_consuming(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    await limiter.put_rule(rule("r", [sliding("s", 3)]), actor="t")
    peek = await limiter.check("acme", "tok", "k", 0)
    assert peek.allowed and peek.remaining == 3
    for _ in range(3):
        assert (await limiter.check("acme", "tok", "k")).allowed
    exhausted = await limiter.check("acme", "tok", "k", 0)
    assert not exhausted.allowed and exhausted.retry_after_ms > 0 and exhausted.remaining == 0
    usage = await limiter.usage("acme", "tok", "k")
    assert usage.results[0].used == 3 and usage.results[0].limit == 3


async def test_shadow_rules_count_but_never_deny(make_limiter: MakeLimiter) -> None:
    registry = CollectorRegistry()
    sink = MemoryDenySink()
    limiter = await make_limiter(metrics=LimiterMetrics(registry), deny_sink=sink)
    await limiter.put_rule(rule("shadowed", [gcra("g", 2)], mode="shadow"), actor="t")
    decisions = [await limiter.check("acme", "tok", "k") for _ in range(5)]
    assert all(d.allowed for d in decisions)
    assert [d.shadow_would_deny for d in decisions] == [False, False, True, True, True]
    assert registry.get_sample_value("mc_rl_shadow_would_deny_total", {"rule": "shadowed"}) == 3
    assert (
        registry.get_sample_value("mc_rl_denies_total", {"rule": "shadowed", "mode": "shadow"}) == 3
    )
    await limiter.flush_denies()
    assert sum(r.count for r in sink.records if r.mode == "shadow") == 3


async def test_global_shadow_switch(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    await limiter.put_rule(rule("r", [gcra("g", 1)]), actor="t")
    assert (await limiter.check("acme", "tok", "k")).allowed
    assert not (await limiter.check("acme", "tok", "k")).allowed
    await limiter.set_global_shadow(True, actor="sre")
    shadowed = await limiter.check("acme", "tok", "k")
    assert shadowed.allowed and shadowed.shadow_would_deny
    await limiter.set_global_shadow(False, actor="sre")
    assert not (await limiter.check("acme", "tok", "k")).allowed


async def test_enforce_percent_by_hash_is_sticky_and_proportional(
    make_limiter: MakeLimiter,
) -> None:
    limiter = await make_limiter()
    await limiter.put_rule(rule("ramp", [gcra("g", 1)], enforce_percent=30), actor="t")
    keys = [f"k{i}" for i in range(300)]
    await limiter.check_batch([CheckRequest("acme", "tok", k) for k in keys])
    second = await limiter.check_batch([CheckRequest("acme", "tok", k) for k in keys])
    third = await limiter.check_batch([CheckRequest("acme", "tok", k) for k in keys])
    denied = [not d.allowed for d in second]
    assert denied == [not d.allowed for d in third], "hash sampling must be deterministic"
    assert 0.22 <= sum(denied) / len(keys) <= 0.38
    for decision in second:
        assert decision.allowed == decision.shadow_would_deny


async def test_enforce_percent_random_sampling(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(rng=random.Random(7))
    await limiter.put_rule(
        rule("ramp", [gcra("g", 1)], enforce_percent=50, enforce_sampling="random"), actor="t"
    )
    await limiter.check("acme", "tok", "k")
    decisions = [await limiter.check("acme", "tok", "k") for _ in range(200)]
    denied = sum(not d.allowed for d in decisions)
    assert 70 <= denied <= 130
    assert all(d.allowed == d.shadow_would_deny for d in decisions)


@pytest.mark.parametrize(
    ("level", "admitted"), [("none", 20), ("mild", 15), ("moderate", 10), ("hard", 2)]
)
async def test_throttle_levels_scale_limits(
    make_limiter: MakeLimiter, level: str, admitted: int
) -> None:
    limiter = await make_limiter()
    await limiter.put_rule(rule("r", [gcra("g", 20), sliding("s", 40)]), actor="t")
    await limiter.set_throttle("acme", level, actor="ops")
    batch = await limiter.check_batch([CheckRequest("acme", "tok", "k")] * 25)
    assert sum(d.allowed for d in batch) == admitted
    other = await limiter.check_batch([CheckRequest("zeta", "tok", "k")] * 25)
    assert sum(d.allowed for d in other) == 20, "other tenants are not throttled"


@pytest.mark.parametrize("level", ["mild", "moderate", "hard"])
@pytest.mark.parametrize("algorithm", [gcra, sliding])
async def test_throttling_a_tenant_never_costs_a_shared_pool_more_than_it_admits(
    make_limiter: MakeLimiter, level: str, algorithm: Callable[..., dict[str, Any]]
) -> None:
    """A throttled tenant drawing on a global GCRA pool used to advance it by 1/factor per
    unit (10x at hard), shrinking every other tenant's pool. It now sees the pool as full
    sooner and each unit it takes costs the pool exactly one unit."""
    limiter = await make_limiter()
    await limiter.put_rule(
        {"id": "pool", "scope": "global", "limits": [algorithm("all", 100)]}, actor="t"
    )
    await limiter.set_throttle("hostile", level, actor="ops")
    hostile = await limiter.check_batch([CheckRequest("hostile", "", "k")] * 150)
    taken = sum(d.allowed for d in hostile)
    assert 1 <= taken < 100  # throttled: it never gets the whole pool
    others = await limiter.check_batch([CheckRequest("good", "", "k")] * 150)
    assert sum(d.allowed for d in others) == 100 - taken


async def test_clients_waiting_retry_after_are_admitted(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    await limiter.put_rule(
        rule("g", [gcra("rate", 50, 1000, burst=3)], match={"key": "g*"}), actor="t"
    )
    await limiter.put_rule(
        rule("s", [sliding("win", 20, 400, sub_windows=4)], match={"key": "s*"}), actor="t"
    )

    async def client(key: str, cost: int) -> tuple[int, int]:
        # A count of waits, not a time: a busy machine takes longer, never fewer waits.
        waits = admitted_after_wait = 0
        while waits < 25:
            decision = await limiter.check("acme", "tok", key, cost)
            if decision.allowed:
                continue
            await asyncio.sleep(decision.retry_after_ms / 1000)
            waits += 1
            admitted_after_wait += (await limiter.check("acme", "tok", key, cost)).allowed
        return waits, admitted_after_wait

    async with asyncio.timeout(120):  # a deadline for a hang, not a performance bound
        results = await asyncio.gather(
            client("g1", 1), client("g2", 2), client("s1", 1), client("s2", 3)
        )
    waits = sum(w for w, _ in results)
    admitted = sum(a for _, a in results)
    assert waits == 100
    assert admitted / waits >= 0.99, results


async def test_batch_keeps_order_and_denies_in_sequence(make_limiter: MakeLimiter) -> None:
    sink = MemoryDenySink()
    registry = CollectorRegistry()
    limiter = await make_limiter(deny_sink=sink, metrics=LimiterMetrics(registry))
    await limiter.put_rule(rule("r", [sliding("s", 3)]), actor="t")
    batch = await limiter.check_batch(
        [CheckRequest("acme", "tok", "k")] * 5 + [CheckRequest("zeta", "tok", "k")]
    )
    assert [d.allowed for d in batch] == [True, True, True, False, False, True]
    assert [d.remaining for d in batch[:3]] == [2, 1, 0]
    await limiter.flush_denies()
    assert sum(r.count for r in sink.records) == 2
    assert {(r.tenant, r.rule_id, r.limit_name, r.key, r.mode) for r in sink.records} == {
        ("acme", "r", "s", "k", "enforce")
    }
    assert registry.get_sample_value("mc_rl_denies_total", {"rule": "r", "mode": "enforce"}) == 2
    assert (registry.get_sample_value("mc_rl_check_seconds_count", {"path": "batch"}) or 0) >= 1


async def test_scopes_count_separately(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    for scope in ("tenant", "token", "key", "token_key"):
        await limiter.put_rule(
            {"id": f"by_{scope}", "scope": scope, "limits": [sliding("s", 100)]}, actor="t"
        )
    await limiter.check_batch(
        [
            CheckRequest("acme", "t1", "k1"),
            CheckRequest("acme", "t1", "k2"),
            CheckRequest("acme", "t2", "k1"),
            CheckRequest("zeta", "t1", "k1"),
        ]
    )
    usage = await limiter.usage("acme", "t1", "k1")
    assert {r.rule_id: r.used for r in usage.results} == {
        "by_tenant": 3,
        "by_token": 2,
        "by_key": 2,
        "by_token_key": 1,
    }


@pytest.mark.parametrize(
    "limit",
    [sliding("s", 10, 1000), sliding("s", 10, 1000, sub_windows=4), gcra("g", 10, 1000)],
    ids=["sliding-1", "sliding-4", "gcra"],
)
async def test_after_the_stated_reset_the_whole_limit_is_available(
    make_limiter: MakeLimiter, limit: dict[str, Any]
) -> None:
    """reset_after_ms used to assume continuous refill (used x window / limit): for a sliding
    window only part of the limit was back at the stated reset."""
    limiter = await make_limiter()
    await limiter.put_rule(rule("r", [limit]), actor="t")
    decisions = await limiter.check_batch([CheckRequest("acme", "", "k")] * 10)
    assert all(d.allowed for d in decisions)
    stated = decisions[-1].results[0].reset_after_ms
    assert 0 < stated <= 2 * limit["window_ms"]
    peek = await limiter.check("acme", "", "k", 0)
    assert peek.results[0].reset_after_ms <= stated
    await asyncio.sleep(peek.results[0].reset_after_ms / 1000)
    after = await limiter.check("acme", "", "k", 0)
    assert after.results[0].remaining == 10, after.results[0]
    assert after.results[0].reset_after_ms == 0
