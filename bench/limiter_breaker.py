"""Benchmark: the shard circuit breaker under CheckBatch load against a healthy Redis.

Starts the real `mc-limiter` process twice on the machine's Redis (socket timeout 100 ms, the
default) and drives CheckBatch of 1,000 checks from 8 concurrent callers, counting breaker
trips (`mc_rl_breaker_trips_total`) and decisions made in degraded mode:

- baseline: `MC_LIMITER_DECISION_TIMEOUT_US=0`, a fixed 100 ms deadline per script call from
  its send, as before (pipelined calls queued behind each other's work time out);
- default: deadlines follow the work sent (500 us per decision after the work ahead of the
  call) and any reply proves the shard alive.

Target: no trip and no degraded decision in the default phase; throughput is printed with its
ratio to the baseline phase of the same run.

Usage: uv run python bench/limiter_breaker.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).parent))

from common import Throughput, closed_loop, free_port, start_child

from mc.limiter.v1 import limiter_pb2 as pb
from mc.limiter.v1 import limiter_service_pb2 as svc
from mc.limiter.v1 import limiter_service_pb2_grpc as svc_grpc
from mc_common.testing import infra

OPERATOR = (("x-mc-principal", "operator:bench"),)
SERVICE_MD = (("x-mc-tenant", "bench-0"), ("x-mc-principal", "service:bench"))
TENANTS = [f"bench-{i}" for i in range(50)]
BATCH = 1000
CONCURRENCY = 8


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


async def phase(redis: str, work: Path, decision_timeout_us: int, seconds: float) -> str:
    prefix = f"mc-bench:{uuid.uuid4().hex[:8]}"
    port, metrics_port = free_port(), free_port()
    limiter = await start_child(
        [sys.executable, "-m", "mc_limiter.main"],
        {
            "MC_LIMITER_REDIS_URLS": redis,
            "MC_LIMITER_KEY_PREFIX": f"{prefix}:rl",
            "MC_LIMITER_FAIRSHARE_KEY_PREFIX": f"{prefix}:fs",
            "MC_LIMITER_GRPC_PORT": str(port),
            "MC_LIMITER_METRICS_PORT": str(metrics_port),
            "MC_LIMITER_LOG_LEVEL": "WARNING",
            "MC_LIMITER_DECISION_TIMEOUT_US": str(decision_timeout_us),
        },
        port,
        work / f"limiter-{decision_timeout_us}.log",
    )
    degraded = decided = 0  # over every call, the warm-up's included
    try:
        async with grpc.aio.insecure_channel(limiter.address) as channel:
            stub = svc_grpc.LimiterServiceStub(channel)
            await stub.PutRule(
                svc.PutRuleRequest(
                    rule=pb.Rule(
                        id="bench",
                        scope=pb.RULE_SCOPE_TENANT,
                        key="bench:*",
                        limits=[
                            pb.Limit(
                                name="per-second",
                                algorithm=pb.ALGORITHM_TOKEN_BUCKET,
                                limit=1_000_000,
                                window_ms=1000,
                            ),
                            pb.Limit(
                                name="per-day",
                                algorithm=pb.ALGORITHM_SLIDING_WINDOW,
                                limit=1_000_000_000,
                                window_ms=86_400_000,
                            ),
                        ],
                    )
                ),
                metadata=OPERATOR,
            )
            batch = svc.CheckBatchRequest(
                checks=[
                    svc.CheckRequest(tenant=TENANTS[i % len(TENANTS)], key="bench:start", cost=1)
                    for i in range(BATCH)
                ]
            )

            async def batch_one(i: int) -> int:
                nonlocal degraded, decided
                reply = await stub.CheckBatch(batch, metadata=SERVICE_MD)
                degraded += sum(r.degraded for r in reply.results)
                decided += len(reply.results)
                return len(reply.results)

            result: Throughput = await closed_loop(
                batch_one, CONCURRENCY, seconds, warmup=1.0, server_cpu=limiter.cpu_seconds
            )
            trips = metric(metrics_port, "mc_rl_breaker_trips_total")
    finally:
        limiter.stop()
    share = degraded / max(1, decided)
    return (
        f"{result.items_per_s:>9,.0f} decisions/s, breaker trips {trips:.0f}, "
        f"degraded decisions {degraded:,} ({share:.2%})|{result.items_per_s}|{trips}|{degraded}"
    )


async def run(seconds: float) -> None:
    redis = infra.redis_url()
    work = Path(tempfile.mkdtemp(prefix="mc-bench-breaker-"))
    baseline = await phase(redis, work, 0, seconds)
    adaptive = await phase(redis, work, 500, seconds)
    base_text, base_rate, _, _ = baseline.split("|")
    new_text, new_rate, trips, degraded = adaptive.split("|")
    print(
        f"limiter breaker under CheckBatch x{BATCH}, c={CONCURRENCY}, {seconds:.0f} s per phase, "
        "socket timeout 100 ms"
    )
    print(f"  baseline (fixed deadline per call)      {base_text}")
    print(f"  deadlines follow the work (default)     {new_text}")
    verdict = "met" if float(trips) == 0 and int(degraded) == 0 else "NOT MET"
    print(
        f"  throughput {float(new_rate) / float(base_rate):.0%} of the baseline phase; "
        f"target no trip and no degraded decision: {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    asyncio.run(run(parser.parse_args().seconds))


if __name__ == "__main__":
    main()
