"""Benchmark: limiter decisions (latency at a fixed rate, max unary rate, batched rate, accuracy).

Starts the real `mc-limiter` process (Redis from MC_REDIS_URL, else the machine's, else
embedded) and a bare gRPC echo server taking the same request type; this process is the load.
Targets on a 2-core machine: server-side Check p99 <= 5 ms at 1,000 checks/s offered; max unary
checks/s >= 60% of the echo baseline; >= 20,000 decisions/s with CheckBatch of 100. Also the
accuracy of the sliding window against an exact sliding log over the same arrivals.

Usage: uv run python bench/limiter_checks.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).parent))

from common import closed_loop, free_port, open_loop, percentile, start_child, start_echo

from mc.limiter.v1 import limiter_pb2 as pb
from mc.limiter.v1 import limiter_service_pb2 as svc
from mc.limiter.v1 import limiter_service_pb2_grpc as svc_grpc
from mc_common.testing import infra

OPERATOR = (("x-mc-principal", "operator:bench"),)
TENANTS = [f"bench-{i}" for i in range(50)]


def histogram_buckets(text: str, metric: str, labels: str) -> dict[float, float]:
    """Cumulative bucket counts of one Prometheus histogram series."""
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{metric}_bucket{{") and labels in line:
            le = line.split('le="')[1].split('"')[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.split()[-1])
    return out


def quantiles_ms(before: dict[float, float], after: dict[float, float]) -> tuple[float, float, int]:
    """p50 and p99 in ms (linear within a bucket) of what was observed between two scrapes."""
    buckets = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = buckets[-1][1] if buckets else 0.0

    def quantile(q: float) -> float:
        target, low, below = q * total, 0.0, 0.0
        for upper, count in buckets:
            if count >= target:
                if upper == float("inf"):
                    return low * 1000
                share = (target - below) / (count - below) if count > below else 1.0
                return (low + (upper - low) * share) * 1000
            low, below = upper, count
        return float("nan")

    return quantile(0.5), quantile(0.99), int(total)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def exact_log_admits(arrivals: list[float], limit: int, window: float) -> int:
    """How many of `arrivals` an exact sliding log (no approximation) admits."""
    admitted: list[float] = []
    start = 0
    for t in arrivals:
        while start < len(admitted) and admitted[start] <= t - window:
            start += 1
        if len(admitted) - start < limit:
            admitted.append(t)
    return len(admitted)


def max_in_window(times: list[float], window: float) -> int:
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def accuracy(stub: svc_grpc.LimiterServiceStub, seconds: float) -> str:
    """Poisson arrivals at 1.5x a 100/s sliding window; compare with the exact log."""
    rule_id = f"acc-{uuid.uuid4().hex[:6]}"
    await stub.PutRule(
        svc.PutRuleRequest(
            rule=pb.Rule(
                id=rule_id,
                scope=pb.RULE_SCOPE_KEY,
                key=f"{rule_id}:*",
                limits=[
                    pb.Limit(
                        name="w",
                        algorithm=pb.ALGORITHM_SLIDING_WINDOW,
                        limit=100,
                        window_ms=1000,
                    )
                ],
            )
        ),
        metadata=OPERATOR,
    )
    rng = random.Random(7)
    request = svc.CheckRequest(tenant="acc", key=f"{rule_id}:k", cost=1)
    metadata = (("x-mc-tenant", "acc"),)
    arrivals: list[float] = []
    admitted: list[float] = []
    start = time.perf_counter()
    next_at = start
    while next_at - start < seconds:
        next_at += rng.expovariate(150.0)
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent = time.perf_counter()
        reply = await stub.Check(request, metadata=metadata)
        arrivals.append(sent - start)
        if reply.allowed:
            admitted.append(sent - start)
    steady = [t for t in arrivals if t >= 1.0]
    exact = exact_log_admits(arrivals, 100, 1.0)
    ours = len(admitted)
    return (
        f"sliding window (100/s, 1 s, 1 sub-window) vs exact log over {len(arrivals)} arrivals "
        f"at ~150/s: admitted {ours} vs {exact} ({(ours - exact) / exact:+.1%}); "
        f"max admitted in any 1 s window {max_in_window(admitted, 1.0)} (limit 100); "
        f"steady-state arrivals {len(steady)}"
    )


async def run(seconds: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="mc-bench-limiter-"))
    redis = infra.redis_url()
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
        },
        port,
        work / "limiter.log",
    )
    echo = await start_echo(
        "mc.limiter.v1.limiter_service_pb2.CheckRequest",
        "mc.limiter.v1.limiter_service_pb2.CheckResponse",
        work / "echo.log",
    )
    try:
        async with (
            grpc.aio.insecure_channel(limiter.address) as channel,
            grpc.aio.insecure_channel(echo.address) as echo_channel,
        ):
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
            requests = [
                (svc.CheckRequest(tenant=t, key="bench:start", cost=1), (("x-mc-tenant", t),))
                for t in TENANTS
            ]
            echo_call = echo_channel.unary_unary(
                "/bench.Echo/Echo",
                request_serializer=svc.CheckRequest.SerializeToString,
                response_deserializer=svc.CheckResponse.FromString,
            )

            async def echo_one(i: int) -> int:
                await echo_call(requests[i % len(requests)][0])
                return 1

            async def check_one(i: int) -> int:
                request, metadata = requests[i % len(requests)]
                await stub.Check(request, metadata=metadata)
                return 1

            service_md = (("x-mc-tenant", "bench-0"), ("x-mc-principal", "service:bench"))
            batch = svc.CheckBatchRequest(checks=[requests[i % 50][0] for i in range(100)])

            async def batch_one(i: int) -> int:
                reply = await stub.CheckBatch(batch, metadata=service_md)
                return len(reply.results)

            await closed_loop(check_one, concurrency=8, seconds=1.0, warmup=0)  # warm caches
            before = scrape(metrics_port)
            fixed = await open_loop(check_one, rate=1000, seconds=seconds)
            after = scrape(metrics_port)
            echo_tp = await closed_loop(echo_one, concurrency=32, seconds=seconds)
            check_tp = await closed_loop(check_one, concurrency=32, seconds=seconds)
            batch_tp = await closed_loop(batch_one, concurrency=4, seconds=seconds)
            acc = await accuracy(stub, min(seconds, 6.0))
    finally:
        limiter.stop()
        echo.stop()

    labels = 'method="/mc.limiter.v1.LimiterService/Check"'
    metric = "mc_grpc_server_handling_seconds"
    p50, p99, count = quantiles_ms(
        histogram_buckets(before, metric, labels), histogram_buckets(after, metric, labels)
    )
    print(f"limiter checks benchmark ({seconds:.0f} s per phase, 2-core machine, load in-process)")
    print(
        f"  fixed 1,000 checks/s offered: client p50 {percentile(fixed.latencies_ms, 0.5):.2f} ms "
        f"p99 {percentile(fixed.latencies_ms, 0.99):.2f} ms; server-side (RPC histogram of this "
        f"phase) p50 {p50:.2f} ms p99 {p99:.2f} ms over {count} calls (target p99 <= 5 ms)"
    )
    print(f"  echo baseline (bare grpc.aio, c=32)  {echo_tp.summary()}")
    print(
        f"  Check unary, 50 tenants, c=32        {check_tp.summary()}  "
        f"= {check_tp.calls_per_s / echo_tp.calls_per_s:.0%} of echo (target >= 60%)"
    )
    print(
        f"  CheckBatch x100, c=4                 {batch_tp.summary()}  "
        f"(target >= 20,000 decisions/s)"
    )
    print(f"  {acc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    asyncio.run(run(parser.parse_args().seconds))


if __name__ == "__main__":
    main()
