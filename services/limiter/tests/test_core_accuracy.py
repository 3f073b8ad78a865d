"""Accuracy under real concurrency: four OS processes, each with its own event loop and Redis
client, hammer the same keys; the admitted units never exceed the limit (plus at most one
request's cost) in any window the algorithm promises.

The workers are ``python -c`` subprocesses (not ``multiprocessing``): pytest's importlib
import mode leaves test modules unimportable by name in a spawned child.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable

from mc_limiter.limiter import Limiter

MakeLimiter = Callable[..., Awaitable[Limiter]]

WORKER = r"""
import asyncio, json, sys
from mc_limiter.limiter import Limiter, LimiterOptions
from mc_limiter.sharding import Shard

async def main(cfg):
    shard = Shard.from_url("s0", cfg["url"], 500)
    limiter = Limiter([shard], options=LimiterOptions(key_prefix=cfg["prefix"]))
    await limiter.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg["seconds"]
    admitted = {key: [] for key in cfg["keys"]}
    attempts = 0

    async def hammer(key):
        nonlocal attempts
        while loop.time() < deadline:
            decision = await limiter.check(cfg["tenant"], "tok", key, cfg["cost"])
            attempts += 1
            if decision.allowed:
                admitted[key].append(decision.now_ms)

    await asyncio.gather(*(hammer(k) for k in cfg["keys"] for _ in range(2)))
    await limiter.close()
    await shard.client.aclose()
    print(json.dumps({"admitted": admitted, "attempts": attempts}), flush=True)

asyncio.run(main(json.loads(sys.argv[1])))
"""

LIMIT = 40
WINDOW_MS = 500
BURST = 10
SECONDS = 2.0


async def run_workers(configs: list[dict[str, object]]) -> list[dict[str, object]]:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            json.dumps(cfg),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for cfg in configs
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line.strip() == b"ready", line
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        results = []
        for proc in procs:
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        return results
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_four_processes_never_exceed_the_limit(
    make_limiter: MakeLimiter, prefix: str
) -> None:
    admin = await make_limiter()
    await admin.put_rule(
        {
            "id": "sw",
            "scope": "key",
            "match": {"key": "sw"},
            "limits": [
                {
                    "name": "w",
                    "algorithm": "sliding_window",
                    "limit": LIMIT,
                    "window_ms": WINDOW_MS,
                }
            ],
        },
        actor="t",
    )
    await admin.put_rule(
        {
            "id": "bucket",
            "scope": "key",
            "match": {"key": "gcra"},
            "limits": [{"name": "b", "limit": LIMIT, "window_ms": WINDOW_MS, "burst": BURST}],
        },
        actor="t",
    )
    url = os.environ.get("MC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    costs = [1, 1, 2, 3]
    configs: list[dict[str, object]] = [
        {
            "url": url,
            "prefix": prefix,
            "tenant": "acme",
            "keys": ["sw", "gcra"],
            "cost": cost,
            "seconds": SECONDS,
        }
        for cost in costs
    ]
    results = await run_workers(configs)
    assert all(int(r["attempts"]) > 100 for r in results)  # type: ignore[call-overload]

    def admissions(key: str) -> list[tuple[int, int]]:
        events = []
        for cost, result in zip(costs, results, strict=True):
            admitted = result["admitted"]
            assert isinstance(admitted, dict)
            events += [(t, cost) for t in admitted[key]]
        return sorted(events)

    max_cost = max(costs)

    # Sliding window: per aligned window the admitted units never exceed the limit, and
    # every fully hammered window is well used.
    sw = admissions("sw")
    per_window: dict[int, int] = defaultdict(int)
    for t, cost in sw:
        per_window[t // WINDOW_MS] += cost
    assert max(per_window.values()) <= LIMIT + max_cost, per_window
    full = sorted(per_window)[1:-1]
    assert full and all(per_window[w] >= LIMIT * 0.8 for w in full), per_window

    # GCRA: in every interval [a, b] of admissions, units <= burst + (b - a) / T (+ 1 ms
    # clock granularity), T = window / limit.
    events = admissions("gcra")
    emission_ms = WINDOW_MS / LIMIT
    worst = 0.0
    for i in range(len(events)):
        units = 0
        for j in range(i, len(events)):
            units += events[j][1]
            allowance = BURST + (events[j][0] - events[i][0] + 1) / emission_ms
            worst = max(worst, units - allowance)
    assert worst <= max_cost, worst
    total = sum(c for _, c in events)
    span = events[-1][0] - events[0][0]
    assert total >= 0.9 * span / emission_ms, (total, span)
