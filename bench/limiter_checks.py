"""Benchmark: limiter decisions (latency at a fixed rate, max unary rate, batched rate, accuracy).

Starts the real `mc-limiter` process (Redis from MC_REDIS_URL, else the machine's, else
embedded) and a bare gRPC echo server taking the same request type; this process is the load.
Targets on a 2-core machine: server-side Check p99 <= 5 ms at 1,000 checks/s offered; max unary
checks/s >= 60% of the echo baseline; >= 20,000 decisions/s with CheckBatch of 100. Also the
accuracy of the sliding window against an exact sliding log over the same arrivals.

Rates move with whatever else runs on the machine, so each phase also prints figures that
hardly do: CPU per item of the server and of this process, and Redis's own time per script
call (from INFO commandstats, differenced over the phase), with the load average.

Usage: uv run python bench/limiter_checks.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import grpc
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).parent))

from common import (
    Throughput,
    closed_loop,
    free_port,
    paced_loop,
    percentile,
    start_child,
    start_echo,
)

from mc.limiter.v1 import limiter_pb2 as pb
from mc.limiter.v1 import limiter_service_pb2 as svc
from mc.limiter.v1 import limiter_service_pb2_grpc as svc_grpc
from mc_common.testing import infra

OPERATOR = (("x-mc-principal", "operator:bench"),)
ROUNDS = 3  # alternating echo/Check rounds after the main phases

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


async def script_stats(redis: Redis) -> tuple[int, int]:
    """EVALSHA calls and microseconds so far, as Redis counts them."""
    stats = (await redis.info("commandstats")).get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def per_call(before: tuple[int, int], after: tuple[int, int], items: int) -> str:
    calls, usec = after[0] - before[0], after[1] - before[1]
    if not calls:
        return "redis: no script calls"
    return (
        f"redis: {calls} EVALSHA, {usec / calls:.1f} us/call, "
        f"{usec / max(items, 1):.1f} us/decision"
    )


def load() -> str:
    return "load avg " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def codes(text: str, method: str) -> dict[str, float]:
    """Calls of `method` the server finished, by status code."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        service, _, name = method.lstrip("/").rpartition("/")
        wanted = f'grpc_method="{name}",grpc_service="{service}"'
        if line.startswith("grpc_server_handled_total{") and wanted in line:
            out[line.split('grpc_code="')[1].split('"')[0]] = float(line.split()[-1])
    return out


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def sample_sum(text: str, name: str) -> float:
    """The sum of a metric's samples in an exposition (all label sets)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


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
    redis_client = Redis.from_url(redis)
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
            # Requests and metadata are built once: the load generator should spend its CPU on
            # calls, not on building them.
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

            async def measured(run_phase: Any) -> tuple[Throughput, str]:
                # Counts the warm-up's script calls too: us/decision is a little high.
                before = await script_stats(redis_client)
                result: Throughput = await run_phase()
                after = await script_stats(redis_client)
                return result, per_call(before, after, result.items)

            await closed_loop(check_one, concurrency=8, seconds=1.0, warmup=0)  # warm caches
            load_before = load()
            before = scrape(metrics_port)
            redis_before = await script_stats(redis_client)
            paced = await paced_loop(
                check_one, rate=1000, seconds=seconds, server_cpu=limiter.cpu_seconds
            )
            fixed_redis = per_call(
                redis_before, await script_stats(redis_client), paced.result.items
            )
            after = scrape(metrics_port)
            echo_tp = await closed_loop(
                echo_one, concurrency=32, seconds=seconds, server_cpu=echo.cpu_seconds
            )
            check_tp, check_redis = await measured(
                lambda: closed_loop(
                    check_one, concurrency=32, seconds=seconds, server_cpu=limiter.cpu_seconds
                ),
            )
            trips_before = sample_sum(scrape(metrics_port), "mc_rl_breaker_trips_total")
            batch_tp, batch_redis = await measured(
                lambda: closed_loop(
                    batch_one, concurrency=4, seconds=seconds, server_cpu=limiter.cpu_seconds
                ),
            )
            batch_trips = (
                sample_sum(scrape(metrics_port), "mc_rl_breaker_trips_total") - trips_before
            )
            # Echo and Check again, alternating in short rounds: machine noise that drifts over
            # a phase then hits both sides of each round's ratio alike.
            round_ratios = []
            for _ in range(ROUNDS):
                e = await closed_loop(echo_one, concurrency=32, seconds=seconds / 2, warmup=0.5)
                c = await closed_loop(check_one, concurrency=32, seconds=seconds / 2, warmup=0.5)
                round_ratios.append((c.calls_per_s / e.calls_per_s, e.calls_per_s, c.calls_per_s))
            acc = await accuracy(stub, min(seconds, 6.0))
            load_after = load()
    finally:
        limiter.stop()
        echo.stop()
        await redis_client.aclose()

    labels = 'grpc_method="Check",grpc_service="mc.limiter.v1.LimiterService"'
    metric = "grpc_server_handling_seconds"
    p50, p99, count = quantiles_ms(
        histogram_buckets(before, metric, labels), histogram_buckets(after, metric, labels)
    )
    own = 'path="redis"'
    own_p50, own_p99, _ = quantiles_ms(
        histogram_buckets(before, "mc_rl_check_seconds", own),
        histogram_buckets(after, "mc_rl_check_seconds", own),
    )
    fixed = paced.result
    method = "/mc.limiter.v1.LimiterService/Check"
    done_before, done_after = codes(before, method), codes(after, method)
    server_codes = {c: n - done_before.get(c, 0) for c, n in done_after.items()}
    failed = {c: int(n) for c, n in server_codes.items() if c != "OK" and n}
    failures = f"; failed calls: client saw {paced.errors}, server answered {failed}"
    lag99 = percentile(paced.send_lag_ms, 0.99)
    keeping_up = paced.offered_per_s >= 950 and lag99 <= 5
    behind = "" if keeping_up else "; THE LOAD PROCESS COULD NOT OFFER 1,000/s"
    print(f"limiter checks benchmark ({seconds:.0f} s per phase, 2-core machine, one load process)")
    print(f"  {load_before} at start, {load_after} at end")
    print(
        f"  fixed 1,000 checks/s: offered {paced.offered_per_s:,.0f}/s (send lag p99 "
        f"{lag99:.2f} ms{behind}); "
        f"client p50 {percentile(fixed.latencies_ms, 0.5):.2f} ms "
        f"p99 {percentile(fixed.latencies_ms, 0.99):.2f} ms"
        f"{failures if paced.errors or failed else ''}"
    )
    print(
        f"    server-side (RPC histogram of this phase) p50 {p50:.2f} ms p99 {p99:.2f} ms over "
        f"{count} calls (target p99 <= 5 ms); limiter's own mc_rl_check_seconds p50 "
        f"{own_p50:.2f} ms p99 {own_p99:.2f} ms; {fixed.cpu_summary()}; {fixed_redis}"
    )
    print(f"  echo baseline (bare grpc.aio, c=32)  {echo_tp.summary()}  {echo_tp.cpu_summary()}")
    print(
        f"  Check unary, 50 tenants, c=32        {check_tp.summary()}  "
        f"= {check_tp.calls_per_s / echo_tp.calls_per_s:.0%} of echo (target >= 60%)"
    )
    print(f"    {check_tp.cpu_summary()}; {check_redis}")
    rounds = ", ".join(f"{c:,.0f}/{e:,.0f} = {r:.0%}" for r, e, c in round_ratios)
    median = statistics.median(r for r, _, _ in round_ratios)
    print(
        f"    alternating rounds (Check/echo calls/s): {rounds}; median {median:.0%} of echo "
        "(target >= 60%)"
    )
    print(
        f"  CheckBatch x100, c=4                 {batch_tp.summary()}  "
        f"(target >= 20,000 decisions/s)"
    )
    print(f"    {batch_tp.cpu_summary()}; {batch_redis}")
    print(
        f"    shard breaker trips during CheckBatch: {batch_trips:.0f} (target 0; "
        "bench/limiter_breaker.py compares with fixed deadlines)"
    )
    print(f"  {acc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    asyncio.run(run(parser.parse_args().seconds))


if __name__ == "__main__":
    main()
