"""Benchmark: the limiter's check hot path over plain TCP vs TLS to Redis (managed Redis).

Starts a TLS-only redis-server (client certificates required, an ACL user; CA made here) and
uses the machine's plain Redis as the baseline, then runs the same closed-loop checks
(c=32, one rule, 50 tenants) through an in-process `Limiter` against each, and prints checks/s
and this process's CPU per check: the CPU cost of TLS on the hot path (the pipelined
connection speaks TLS itself; it does not fall back to redis-py).

Usage: uv run python bench/limiter_redis_tls.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

from mc_common.testing import infra
from mc_common.testing.tls import TestCA, start_tls_redis
from mc_limiter.limiter import Limiter
from mc_limiter.options import LimiterOptions
from mc_limiter.sharding import Shard

PASSWORD = "bench-pw"


async def run_checks(url: str, seconds: float) -> tuple[float, float, int]:
    prefix = f"mc-bench:{uuid.uuid4().hex[:8]}:"
    limiter = Limiter([Shard.from_url("s0", url, 1000)], options=LimiterOptions(key_prefix=prefix))
    await limiter.start()
    try:
        await limiter.put_rule(
            {
                "id": "bench",
                "scope": "tenant",
                "limits": [
                    {"name": "g", "algorithm": "gcra", "limit": 10**9, "window_ms": 3_600_000}
                ],
            },
            actor="bench",
        )
        await limiter.check("t0", "", "k")  # connect, load scripts
        done = 0
        degraded = 0
        stop_at = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            nonlocal done, degraded
            while time.perf_counter() < stop_at:
                decision = await limiter.check(f"t{(i + done) % 50}", "", "k")
                degraded += decision.degraded
                done += 1

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(32)))
        cpu, elapsed = time.process_time() - cpu0, time.perf_counter() - t0
    finally:
        await limiter.close()
    return done / elapsed, cpu / max(done, 1) * 1e6, degraded


async def main(seconds: float) -> None:
    ca = TestCA(Path(tempfile.mkdtemp(prefix="mc-bench-tls-")))
    client = ca.issue("mc-limiter", client=True)
    plain_url = infra.redis_url()
    with start_tls_redis(ca, user="mc-limiter", password=PASSWORD) as port:
        query = (
            f"ssl_ca_certs={quote(str(ca.cert))}&ssl_certfile={quote(str(client.cert))}"
            f"&ssl_keyfile={quote(str(client.key))}"
        )
        tls_url = f"rediss://mc-limiter:{PASSWORD}@localhost:{port}/0?{query}"
        await run_checks(plain_url, 1.0)  # warm-up, discarded
        plain = await run_checks(plain_url, seconds)
        tls = await run_checks(tls_url, seconds)
        plain2 = await run_checks(plain_url, seconds)
    print(
        f"limiter hot path, plain vs TLS Redis ({seconds:.0f} s each, c=32, in-process, "
        f"load average {os.getloadavg()[0]:.2f})"
    )
    for name, (rate, cpu_us, degraded) in (
        ("plain TCP", plain),
        ("TLS + client cert + ACL", tls),
        ("plain TCP again", plain2),
    ):
        print(
            f"  {name:24s} {rate:9,.0f} checks/s  {cpu_us:6.1f} us CPU/check  degraded {degraded}"
        )
    base_rate = (plain[0] + plain2[0]) / 2
    base_cpu = (plain[1] + plain2[1]) / 2
    print(
        f"  TLS: {tls[0] / base_rate:.0%} of plain throughput, {tls[1] / base_cpu - 1:+.0%} CPU "
        "per check (against the mean of the two plain runs)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    asyncio.run(main(parser.parse_args().seconds))
    sys.exit(0)
