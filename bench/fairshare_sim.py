"""Fair-share dispatcher (MC-LIM-903) against a plain FIFO baseline, in simulated time.

Both runs use the real Lua dispatcher in Redis and the same seeded closed-loop load: one hostile
tenant keeping ``--hostile-factor`` times its fair share outstanding and ``--tenants``
well-behaved tenants keeping 1.5x theirs, all holding slots for uniform 0.5-1.5 s of simulated
time. The baseline sends every request under one shared tenant, which turns the dispatcher
into a global FIFO semaphore; the fair run uses the real tenants. Figures are printed as
fair-share vs FIFO. Run: ``uv run python bench/fairshare_sim.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import os
import random
import statistics
import time
import uuid
from dataclasses import dataclass, field

from redis.asyncio import Redis

from mc_limiter.fairshare import FairShareDispatcher, Grant, TicketState

FIFO_TENANT = "all"


@dataclass
class Outcome:
    """What one run measured over its window."""

    slot_ms: dict[str, int]
    waits_ms: dict[str, list[int]]
    script_calls: int
    requests: int
    wall_s: float
    redis_script_us: float


@dataclass
class Run:
    """Drives one dispatcher in 10 ms ticks of simulated time with closed-loop tenants."""

    dispatcher: FairShareDispatcher
    demand: dict[str, int]
    fifo: bool
    seed: int
    now_ms: list[int]
    tick_ms: int = 10
    holding: dict[str, int] = field(default_factory=dict)  # request -> tenant
    queued: dict[str, int] = field(default_factory=dict)  # tenant -> queued count
    ends: list[tuple[int, str]] = field(default_factory=list)
    calls: int = 0
    requests: int = 0

    def key(self, tenant: str) -> str:
        return FIFO_TENANT if self.fifo else tenant

    async def run(self, duration_ms: int, warmup_ms: int) -> Outcome:

        rng = random.Random(self.seed)
        owner: dict[str, str] = {}
        running = dict.fromkeys(self.demand, 0)
        self.queued = dict.fromkeys(self.demand, 0)
        slot_ms = dict.fromkeys(self.demand, 0)
        waits: dict[str, list[int]] = {t: [] for t in self.demand}
        counter = itertools.count()
        t = 0
        started = time.perf_counter()

        def granted(rid: str, waited: int | None) -> None:
            tenant = owner[rid]
            running[tenant] += 1
            heapq.heappush(self.ends, (t + rng.randint(500, 1500), rid))
            if t >= warmup_ms and waited is not None:
                waits[tenant].append(waited)

        def dispatched(grants: tuple[Grant, ...]) -> None:
            for g in grants:
                self.queued[owner[g.request_id]] -= 1
                granted(g.request_id, g.waited_ms)

        while t < duration_ms:
            t += self.tick_ms
            self.now_ms[0] += self.tick_ms
            done: list[tuple[str, str]] = []
            while self.ends and self.ends[0][0] <= t:
                _, rid = heapq.heappop(self.ends)
                running[owner[rid]] -= 1
                done.append((self.key(owner[rid]), rid))
            for i in range(0, len(done), 1000):
                self.calls += 1
                self.requests += len(done[i : i + 1000])
                dispatched((await self.dispatcher.release_many(done[i : i + 1000])).dispatched)
            waves = []
            for tenant, want in self.demand.items():
                missing = want - running[tenant] - self.queued[tenant]
                ids = [f"{tenant}/{next(counter)}" for _ in range(max(0, missing))]
                owner.update(dict.fromkeys(ids, tenant))
                waves.append(ids)
            wanted = [r for wave in itertools.zip_longest(*waves) for r in wave if r is not None]
            for i in range(0, len(wanted), 1000):
                chunk = [(self.key(owner[rid]), rid) for rid in wanted[i : i + 1000]]
                self.calls += 1
                self.requests += len(chunk)
                batch = await self.dispatcher.acquire_many(chunk)
                dispatched(batch.dispatched)
                for ticket in batch.tickets:
                    if ticket.state is TicketState.GRANTED:
                        granted(ticket.request_id, 0)
                    else:
                        self.queued[owner[ticket.request_id]] += 1
            if t >= warmup_ms:
                for tenant, n in running.items():
                    slot_ms[tenant] += n * self.tick_ms
        wall = time.perf_counter() - started
        return Outcome(slot_ms, waits, self.calls, self.requests, wall, 0.0)


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def p99(values: list[int]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else float("nan")


async def script_usec(client: Redis) -> float:
    """Server-side time spent in EVALSHA so far (shared server: other clients add noise)."""
    stats = await client.info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec", 0))


async def measure(args: argparse.Namespace, fifo: bool) -> Outcome:
    client = Redis.from_url(args.redis_url)
    prefix = "{mc-bench-fairshare-" + uuid.uuid4().hex + "}"
    clock = [1_000_000]
    dispatcher = FairShareDispatcher(
        client,
        key_prefix=prefix,
        capacity=args.capacity,
        default_lease_ms=3_600_000,
        clock=lambda: clock[0],
    )
    share = args.capacity / (args.tenants + 1)
    demand = {"hostile": round(args.hostile_factor * share)}
    demand |= {f"tenant-{i:02d}": round(1.5 * share) for i in range(args.tenants)}
    try:
        run = Run(dispatcher, demand, fifo=fifo, seed=args.seed, now_ms=clock)
        before = await script_usec(client)
        outcome = await run.run(args.duration_ms, args.warmup_ms)
        outcome.redis_script_us = await script_usec(client) - before
        return outcome
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        for i in range(0, len(keys), 1000):
            await client.delete(*keys[i : i + 1000])
        await client.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--redis-url", default=os.environ.get("MC_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--capacity", type=int, default=5_000)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--hostile-factor", type=float, default=10.0)
    parser.add_argument("--duration-ms", type=int, default=8_000)
    parser.add_argument("--warmup-ms", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=903)
    args = parser.parse_args()

    fair = await measure(args, fifo=False)
    fifo = await measure(args, fifo=True)
    window = args.duration_ms - args.warmup_ms
    total_slot_ms = args.capacity * window

    def row(name: str, fair_value: float, fifo_value: float) -> None:
        ratio = fair_value / fifo_value if fifo_value else float("nan")
        print(f"{name:<44} {fair_value:>12.4f} {fifo_value:>12.4f} {ratio:>10.3f}")

    good = [t for t in fair.slot_ms if t != "hostile"]
    print(
        f"capacity {args.capacity}, {args.tenants} tenants + 1 hostile at "
        f"{args.hostile_factor:g}x share, window {window} ms simulated after {args.warmup_ms} ms"
    )
    print(f"{'figure':<44} {'fair-share':>12} {'FIFO':>12} {'fair/FIFO':>10}")
    row(
        "hostile share of slot-time",
        fair.slot_ms["hostile"] / total_slot_ms,
        fifo.slot_ms["hostile"] / total_slot_ms,
    )
    row("fair share (1/(n+1))", 1 / (args.tenants + 1), 1 / (args.tenants + 1))
    row(
        "Jain index, all tenants' slot-time",
        jain([float(v) for v in fair.slot_ms.values()]),
        jain([float(v) for v in fifo.slot_ms.values()]),
    )
    row(
        "Jain index, well-behaved slot-time",
        jain([float(fair.slot_ms[t]) for t in good]),
        jain([float(fifo.slot_ms[t]) for t in good]),
    )
    fair_waits = [w for t in good for w in fair.waits_ms[t]]
    fifo_waits = [w for t in good for w in fifo.waits_ms[t]]
    row(
        "well-behaved request wait p50 (ms)",
        statistics.median(fair_waits),
        statistics.median(fifo_waits),
    )
    row("well-behaved request wait p99 (ms)", p99(fair_waits), p99(fifo_waits))
    row(
        "hostile request wait p50 (ms)",
        statistics.median(fair.waits_ms["hostile"]),
        statistics.median(fifo.waits_ms["hostile"]),
    )
    row(
        "Redis script time per request (us)",
        fair.redis_script_us / fair.requests,
        fifo.redis_script_us / fifo.requests,
    )
    row(
        "requests (acquire+release) per wall second",
        fair.requests / fair.wall_s,
        fifo.requests / fifo.wall_s,
    )
    row("wall seconds for the run", fair.wall_s, fifo.wall_s)


if __name__ == "__main__":
    asyncio.run(main())
