"""Benchmark: recording receipts in the provenance service (unary, batched, fixed offered rate).

Starts the real `mc-pql` process on a fresh database (the machine's Postgres, or
MC_POSTGRES_DSN) and a bare gRPC echo server taking the same request type, then drives both from
this process. Targets on a 2-core machine: >= 500 receipts/s unary, >= 3,000/s batched, and
p99 <= 30 ms at 250 receipts/s offered.

Usage: uv run python bench/pql_receipts.py [--seconds 10] [--workers 1] [--channels 1]
(several workers need several channels: the kernel spreads connections, not calls, over them)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "services" / "pql" / "tests"))

from common import (
    Channels,
    closed_loop,
    free_port,
    paced_loop,
    percentile,
    start_child,
    start_echo,
    until_listening,
)
from pql_support import record

from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_common.signing import PemSigner
from mc_common.testing import infra

TENANTS = [f"bench-{i}" for i in range(8)]


async def run(seconds: float, workers: int, channels: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="mc-bench-pql-"))
    admin = infra.postgres_dsn()
    db = infra.unique_name("mc_bench")
    dsn = infra.create_database(admin, db)
    key = work / "key.pem"
    PemSigner.generate().save(key)
    port = free_port()
    pql = await start_child(
        [sys.executable, "-m", "mc_pql.main"],
        {
            "MC_PQL_POSTGRES_DSN": dsn,
            "MC_PQL_SIGNING_KEY_PATH": str(key),
            "MC_PQL_GRPC_PORT": str(port),
            "MC_PQL_LOG_LEVEL": "WARNING",
            "MC_PQL_POOL_MAX_SIZE": "8",
            "MC_PQL_WORKERS": str(workers),
        },
        port,
        work / "pql.log",
    )
    # Connections made before every worker listens would all stick to the first ones.
    await until_listening(port, workers)
    echo = await start_echo(
        "mc.pql.v1.provenance_service_pb2.RecordReceiptRequest",
        "mc.pql.v1.provenance_service_pb2.RecordReceiptResponse",
        work / "echo.log",
    )
    requests = [record(f"exec-{i}", i) for i in range(1000)]
    try:
        async with (
            Channels(pql.address, channels) as pql_channels,
            Channels(echo.address, channels) as echo_channels,
        ):
            stubs = [svc_grpc.ProvenanceServiceStub(c) for c in pql_channels]
            echo_calls = [
                c.unary_unary(
                    "/bench.Echo/Echo",
                    request_serializer=svc.RecordReceiptRequest.SerializeToString,
                    response_deserializer=svc.RecordReceiptResponse.FromString,
                )
                for c in echo_channels
            ]

            def stub(i: int) -> svc_grpc.ProvenanceServiceAsyncStub:
                return stubs[i % len(stubs)]

            def echo_call(i: int) -> Any:
                return echo_calls[i % len(echo_calls)]

            async def echo_one(i: int) -> int:
                await echo_call(i)(requests[i % len(requests)])
                return 1

            async def unary_one(i: int) -> int:
                tenant = TENANTS[i % len(TENANTS)]
                await stub(i).RecordReceipt(
                    requests[i % len(requests)], metadata=[("x-mc-tenant", tenant)]
                )
                return 1

            batch = svc.RecordReceiptsRequest(receipts=requests[:100])

            async def batch_one(i: int) -> int:
                tenant = TENANTS[i % len(TENANTS)]
                await stub(i).RecordReceipts(batch, metadata=[("x-mc-tenant", tenant)])
                return 100

            async def single_tenant(i: int) -> int:
                await stub(i).RecordReceipt(
                    requests[i % len(requests)], metadata=[("x-mc-tenant", "bench-solo")]
                )
                return 1

            load_before = os.getloadavg()
            echo_cpu, pql_cpu = echo.cpu_seconds, pql.cpu_seconds
            echo_tp = await closed_loop(echo_one, 32, seconds, server_cpu=echo_cpu)
            unary_tp = await closed_loop(unary_one, 32, seconds, server_cpu=pql_cpu)
            solo_tp = await closed_loop(single_tenant, 32, seconds, server_cpu=pql_cpu)
            batch_tp = await closed_loop(batch_one, 4, seconds, server_cpu=pql_cpu)
            paced = await paced_loop(unary_one, rate=250, seconds=seconds, server_cpu=pql_cpu)
            echo_paced = await paced_loop(echo_one, rate=250, seconds=seconds, server_cpu=echo_cpu)
            fixed, echo_fixed = paced.result, echo_paced.result
            load_after = os.getloadavg()
            verify = await stub(0).VerifyChain(
                svc.VerifyChainRequest(), metadata=[("x-mc-tenant", "bench-solo")]
            )
    finally:
        pql.stop()
        echo.stop()
        infra.drop_database(admin, db)

    print(
        f"pql receipts benchmark ({seconds:.0f} s per phase, 2-core machine, load in-process "
        f"over {channels} channel(s) (as from {channels} client(s)), pql with {workers} worker "
        "process(es))"
    )
    print(
        f"  machine: {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after (anything above ~1 is other work competing)"
    )
    print(f"  echo baseline (bare grpc.aio, c=32)   {echo_tp.summary()}")
    print(
        f"  RecordReceipt unary, 8 tenants, c=32  {unary_tp.summary()}  "
        f"= {unary_tp.items_per_s / echo_tp.calls_per_s:.0%} of echo  (target >= 500/s)"
    )
    print(
        f"  RecordReceipt unary, 1 tenant, c=32   {solo_tp.summary()}  "
        f"= {solo_tp.items_per_s / echo_tp.calls_per_s:.0%} of echo"
    )
    print(
        f"  RecordReceipts x100, 8 tenants, c=4   {batch_tp.summary()}  "
        f"= {batch_tp.items_per_s / echo_tp.calls_per_s:.0%} of echo calls/s  (target >= 3000/s)"
    )
    fixed_p99, echo_p99 = (percentile(t.latencies_ms, 0.99) for t in (fixed, echo_fixed))
    print(
        f"  fixed 250/s offered, 8 tenants        p50 {percentile(fixed.latencies_ms, 0.5):.2f} ms"
        f"  p99 {fixed_p99:.2f} ms  (target p99 <= 30 ms)"
    )
    print(
        f"  echo at the same 250/s                p50 "
        f"{percentile(echo_fixed.latencies_ms, 0.5):.2f} ms  p99 {echo_p99:.2f} ms"
        f"  (pql p99 = {fixed_p99 / echo_p99:.1f}x echo's)"
    )
    print(
        f"  (offered {paced.offered_per_s:.0f}/s; this process sent late by p99 "
        f"{percentile(paced.send_lag_ms, 0.99):.2f} ms, counted in the latencies)"
    )
    print("  CPU per receipt (echo: per call), the figures to compare when the machine is busy:")
    for name, tp in (
        ("echo", echo_tp),
        ("unary 8 tenants", unary_tp),
        ("unary 1 tenant", solo_tp),
        ("batched x100", batch_tp),
        ("fixed 250/s", fixed),
        ("echo at 250/s", echo_fixed),
    ):
        print(f"    {name:16s} {tp.cpu_summary()}")
    print(
        f"  single-tenant chain after the run: valid={verify.verification.valid} "
        f"receipts={verify.receipts_checked}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1, help="MC_PQL_WORKERS of the service")
    parser.add_argument(
        "--channels", type=int, default=1, help="client connections (each its own TCP connection)"
    )
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.workers, args.channels))


if __name__ == "__main__":
    main()
