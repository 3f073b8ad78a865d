"""Benchmark: limiter cost against the number of rules (issue 7 section 5).

At each size (default 10,000 and 100,000 rules, a mix of literal and wildcard tenants with
exact, prefix, suffix and infix key globs) this loads the rules into the machine's Redis
(under a throw-away key prefix, removed at the end), starts a `Limiter` in this process and
prints:

* first check of an unseen key: p50/p99 of the whole `check()` (plan + one script call) and
  of planning alone, against the BASELINE: the pre-index matcher (every rule of the tenant
  and every wildcard rule tested with fnmatch patterns from a 4,096-entry LRU cache), timed
  on the same rules and keys in the same run;
* PutRule p50/p99 with a warm plan cache, against the BASELINE write path (the write plus a
  full reload of the configuration and a flushed plan cache, as before the changelog);
* the longest event-loop stall seen by a 1 ms ticker while rules are written, and while a
  replica replays 1,000 changes and while it reloads everything (what a concurrent check
  would wait at most);
* ListRules page latency (100 rules a page, unfiltered and filtered by tenant).

Targets at 100,000 rules: first check p99 <= 2 ms, PutRule p99 <= 10 ms, no check delayed more
than 10 ms by a concurrent write. Figures move with the machine's load (printed).

Usage: uv run python bench/limiter_rules.py [--sizes 10000,100000] [--redis URL]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from fnmatch import translate
from functools import lru_cache
from typing import Any

from redis.asyncio import Redis

from mc_limiter.limiter import Limiter, LimiterOptions
from mc_limiter.rules import Rule, parse_rule
from mc_limiter.sharding import Shard
from mc_limiter.store import RuleStore


def rule_data(i: int, n_tenants: int) -> dict[str, Any]:
    """Rule ``i`` of a realistic mix: 40% per-tenant prefix rules, 25% wildcard-tenant prefix
    rules, 15% suffix, 10% infix, 10% exact keys."""
    kind = i % 20
    tenant = f"tenant-{i % n_tenants}"
    if kind < 8:
        match = {"tenant": tenant, "key": f"/svc{i}/*"}
    elif kind < 13:
        match = {"tenant": "*", "key": f"/api{i}/*"}
    elif kind < 16:
        match = {"tenant": "*", "key": f"*.t{i}"}
    elif kind < 18:
        match = {"tenant": "t*", "key": f"*/op{i}/*"}
    else:
        match = {"tenant": tenant, "key": f"/exact/{i}"}
    return {
        "id": f"rule-{i:06d}",
        "scope": "key",
        "match": match,
        "limits": [{"name": "rps", "limit": 1_000_000, "window_ms": 1000}],
    }


def key_for(i: int, n_tenants: int) -> tuple[str, str]:
    """A request matching rule ``i`` (and the wildcard rules that match it too)."""
    data = rule_data(i, n_tenants)
    key = data["match"]["key"]
    tenant = f"tenant-{i % n_tenants}"
    concrete = key.replace("*", f"x{random.randrange(1 << 30)}", 1).replace("*", "")
    return tenant, concrete


class BaselineMatcher:
    """The matcher before the index: literal-tenant rules of the tenant plus every
    wildcard-tenant rule, each tested with globs compiled through a 4,096-entry LRU."""

    def __init__(self, rules: list[Rule]) -> None:
        self.by_tenant: dict[str, list[Rule]] = {}
        self.any_tenant: list[Rule] = []
        for rule in sorted(rules, key=lambda r: r.id):
            literal = rule.match.literal_tenant
            if literal is None:
                self.any_tenant.append(rule)
            else:
                self.by_tenant.setdefault(literal, []).append(rule)

    def rules_for(self, tenant: str, token: str, key: str) -> list[Rule]:
        candidates = self.by_tenant.get(tenant, []) + self.any_tenant
        return [
            r
            for r in candidates
            if _glob(r.match.tenant, tenant)
            and _glob(r.match.token, token)
            and _glob(r.match.key, key)
        ]


def _glob(pattern: str, value: str) -> bool:
    if pattern == "*":
        return True
    if not any(ch in pattern for ch in "*?["):
        return pattern == value
    return _compiled(pattern).match(value) is not None


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(translate(pattern))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def fmt(values: list[float], cpu: list[float] | None = None) -> str:
    out = f"p50 {pct(values, 50):8.3f} ms  p99 {pct(values, 99):8.3f} ms"
    if cpu:
        out += f"  (CPU p50 {pct(cpu, 50):.3f} p99 {pct(cpu, 99):.3f})"
    return out + f"  n={len(values)}"


class Timer:
    """Wall and CPU time of sequential operations, in ms."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> Timer:
        self._t, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall.append((time.perf_counter() - self._t) * 1000)
        self.cpu.append((time.process_time() - self._c) * 1000)

    def __str__(self) -> str:
        return fmt(self.wall, self.cpu)


class Ticker:
    """Measures event-loop stalls: a task that asks to wake every 1 ms and records how late
    it woke (wall clock) and how much CPU this process used meanwhile, and the CPU time of the
    longest single event-loop step (one callback: what one piece of work holds the loop for,
    which is what a check arriving then waits at most on an idle machine). On a busy machine
    the wall figure includes time the OS gave to other processes, and between two ticks
    several steps that became ready together may run."""

    def __init__(self) -> None:
        self.worst_wall = 0.0
        self.worst_cpu = 0.0
        self.worst_step = 0.0
        self.worst_gc = 0.0
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None
        self._original = asyncio.events.Handle._run

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.process_time()
        elif info.get("generation") == 2:
            self.worst_gc = max(self.worst_gc, (time.process_time() - self._gc_started) * 1000)

    def _watch_steps(self) -> None:
        original = self._original

        def timed(handle: asyncio.events.Handle) -> None:
            cpu = time.process_time()
            original(handle)
            self.worst_step = max(self.worst_step, (time.process_time() - cpu) * 1000)

        asyncio.events.Handle._run = timed  # type: ignore[method-assign]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.001
            cpu = time.process_time()
            await asyncio.sleep(0.001)
            self.worst_wall = max(self.worst_wall, (loop.time() - due) * 1000)
            self.worst_cpu = max(self.worst_cpu, (time.process_time() - cpu) * 1000)

    async def measure(self, work: Callable[[], Awaitable[Any]]) -> str:
        self.worst_wall = self.worst_cpu = self.worst_step = self.worst_gc = 0.0
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.01)
        self._watch_steps()
        gc.callbacks.append(self._gc)
        try:
            await work()
        finally:
            gc.callbacks.remove(self._gc)
            asyncio.events.Handle._run = self._original  # type: ignore[method-assign]
            self._task.cancel()
        return (
            f"longest step {self.worst_step:.1f} ms CPU (longest full GC pass "
            f"{self.worst_gc:.1f}); between ticks {self.worst_cpu:.1f} ms CPU "
            f"({self.worst_wall:.1f} ms wall)"
        )


async def load_rules(store: RuleStore, n: int, n_tenants: int) -> None:
    sem = asyncio.Semaphore(16)

    async def put(i: int) -> None:
        async with sem:
            await store.put_rule(parse_rule(rule_data(i, n_tenants)), "bench")

    for at in range(0, n, 5000):
        await asyncio.gather(*(put(i) for i in range(at, min(n, at + 5000))))


async def run_size(url: str, n: int) -> None:
    prefix = f"bench-rules-{uuid.uuid4().hex[:8]}"
    client = Redis.from_url(url)
    n_tenants = max(100, n // 100)
    store = RuleStore(client, prefix)
    print(f"\n=== {n:,} rules (load average {os.getloadavg()[0]:.1f}) ===")
    started = time.perf_counter()
    await load_rules(store, n, n_tenants)
    print(f"stored through RuleStore.put_rule in {time.perf_counter() - started:.1f} s")
    options = LimiterOptions(key_prefix=prefix, config_refresh_ms=3_600_000)
    limiter = Limiter([Shard.from_url("s0", url, 1000)], options=options)
    started = time.perf_counter()
    ticker = Ticker()
    stall = await ticker.measure(limiter.start)
    print(
        f"replica start (full load): {time.perf_counter() - started:.2f} s, longest stall {stall}"
    )
    try:
        await measure(limiter, store, n, n_tenants, ticker)
    finally:
        await limiter.close()
        async for key in client.scan_iter(match=f"{prefix}*", count=5000):
            await client.delete(key)
        await client.aclose()


async def measure(
    limiter: Limiter, store: RuleStore, n: int, n_tenants: int, ticker: Ticker
) -> None:
    rng = random.Random(7)
    samples = [key_for(rng.randrange(n), n_tenants) for _ in range(2000)]
    # First check of unseen keys: whole check, and planning alone on other unseen keys.
    checks, plans = Timer(), Timer()
    for tenant, key in samples[:1000]:
        with checks:
            await limiter.check(tenant, "", key)
    for tenant, key in samples[1000:]:
        with plans:
            limiter.planner.plan(tenant, "", key)
    rules = [s.rule for s in limiter.planner.snapshot.rules.values()]
    baseline = BaselineMatcher(rules)
    base = []
    budget = time.perf_counter() + 20.0  # the baseline is slow at scale: time-boxed
    for tenant, key in samples[1000:]:
        if len(base) >= (5 if n < 50_000 else 3) and time.perf_counter() > budget:
            break
        t0 = time.perf_counter()
        found = baseline.rules_for(tenant, "", key)
        base.append((time.perf_counter() - t0) * 1000)
        assert [r.id for r in found] == [
            r.id for r in limiter.planner.snapshot.rules_for(tenant, "", key)
        ]
    print(f"first check (whole check):      {checks}")
    print(f"first check (planning only):    {plans}")
    print(f"BASELINE matching only:         {fmt(base)}")
    print(f"  ratio p99 baseline/planning:  {pct(base, 99) / pct(plans.wall, 99):,.0f}x")

    # PutRule with a warm plan cache (the 2,000 keys above are cached).
    puts = Timer()
    i = n

    async def write_many() -> None:
        nonlocal i
        for _ in range(300):
            data = rule_data(i if i % 2 else rng.randrange(n), n_tenants)
            with puts:
                await limiter.put_rule(data, actor="bench")
            i += 1

    write_stall = await ticker.measure(write_many)
    print(f"PutRule (warm plan cache):      {puts}")
    print(f"  longest loop stall while writing: {write_stall}")
    base_puts = []
    for _ in range(3 if n < 50_000 else 1):
        t0 = time.perf_counter()
        await store.put_rule(parse_rule(rule_data(rng.randrange(n), n_tenants)), "bench")
        await store.load()
        limiter.planner.invalidate()
        base_puts.append((time.perf_counter() - t0) * 1000)
    print(f"BASELINE PutRule (write + full reload): {fmt(base_puts)}")
    print(f"  ratio p99 baseline/PutRule:   {pct(base_puts, 99) / pct(puts.wall, 99):,.0f}x")

    # A replica replaying 1,000 changes, and one reloading everything.
    for j in range(1000):
        await store.put_rule(parse_rule(rule_data(n + 10_000 + j, n_tenants)), "other")
    replay_start = time.perf_counter()
    stall = await ticker.measure(limiter.admin.catch_up)
    replay_s = time.perf_counter() - replay_start
    print(f"replica replays 1,000 changes:  {replay_s * 1000:.0f} ms, longest stall {stall}")
    stall = await ticker.measure(limiter.reload)
    print(f"replica full reload:            longest stall {stall}")

    # ListRules pages.
    pages, filtered = Timer(), Timer()
    token = ""
    for _ in range(100):
        with pages:
            page = await limiter.list_rules(page_size=100, page_token=token)
        token = page.next_page_token
    token = ""
    for _ in range(100):
        with filtered:
            page = await limiter.list_rules("tenant-3", page_size=100, page_token=token)
        token = page.next_page_token
        if not token:
            break
    print(f"ListRules page of 100:          {pages}")
    print(f"ListRules page, tenant filter:  {filtered}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument(
        "--redis", default=os.environ.get("MC_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args()
    for n in (int(s) for s in args.sizes.split(",")):
        await run_size(args.redis, n)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
