"""Benchmark: recording receipts in the provenance service (unary, batched, fixed offered rate).

Starts the real `mc-pql` process on a fresh database (the machine's Postgres, or
MC_POSTGRES_DSN) and a bare gRPC echo server taking the same request type, then drives both from
this process. Targets on a 2-core machine: >= 500 receipts/s unary, >= 3,000/s batched, and
p99 <= 30 ms at 250 receipts/s offered.

Usage: uv run python bench/pql_receipts.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "services" / "pql" / "tests"))

from common import closed_loop, free_port, open_loop, percentile, start_child, start_echo
from pql_support import record

from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_common.signing import PemSigner
from mc_common.testing import infra

TENANTS = [f"bench-{i}" for i in range(8)]


async def run(seconds: float) -> None:
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
        },
        port,
        work / "pql.log",
    )
    echo = await start_echo(
        "mc.pql.v1.provenance_service_pb2.RecordReceiptRequest",
        "mc.pql.v1.provenance_service_pb2.RecordReceiptResponse",
        work / "echo.log",
    )
    requests = [record(f"exec-{i}", i) for i in range(1000)]
    try:
        async with (
            grpc.aio.insecure_channel(pql.address) as pql_channel,
            grpc.aio.insecure_channel(echo.address) as echo_channel,
        ):
            stub = svc_grpc.ProvenanceServiceStub(pql_channel)
            echo_call = echo_channel.unary_unary(
                "/bench.Echo/Echo",
                request_serializer=svc.RecordReceiptRequest.SerializeToString,
                response_deserializer=svc.RecordReceiptResponse.FromString,
            )

            async def echo_one(i: int) -> int:
                await echo_call(requests[i % len(requests)])
                return 1

            async def unary_one(i: int) -> int:
                tenant = TENANTS[i % len(TENANTS)]
                await stub.RecordReceipt(
                    requests[i % len(requests)], metadata=[("x-mc-tenant", tenant)]
                )
                return 1

            batch = svc.RecordReceiptsRequest(receipts=requests[:100])

            async def batch_one(i: int) -> int:
                tenant = TENANTS[i % len(TENANTS)]
                await stub.RecordReceipts(batch, metadata=[("x-mc-tenant", tenant)])
                return 100

            async def single_tenant(i: int) -> int:
                await stub.RecordReceipt(
                    requests[i % len(requests)], metadata=[("x-mc-tenant", "bench-solo")]
                )
                return 1

            load_before = os.getloadavg()
            echo_cpu, pql_cpu = echo.cpu_seconds, pql.cpu_seconds
            echo_tp = await closed_loop(echo_one, 32, seconds, server_cpu=echo_cpu)
            unary_tp = await closed_loop(unary_one, 32, seconds, server_cpu=pql_cpu)
            solo_tp = await closed_loop(single_tenant, 32, seconds, server_cpu=pql_cpu)
            batch_tp = await closed_loop(batch_one, 4, seconds, server_cpu=pql_cpu)
            fixed = await open_loop(unary_one, rate=250, seconds=seconds, server_cpu=pql_cpu)
            echo_fixed = await open_loop(echo_one, rate=250, seconds=seconds, server_cpu=echo_cpu)
            load_after = os.getloadavg()
            verify = await stub.VerifyChain(
                svc.VerifyChainRequest(), metadata=[("x-mc-tenant", "bench-solo")]
            )
    finally:
        pql.stop()
        echo.stop()
        infra.drop_database(admin, db)

    print(f"pql receipts benchmark ({seconds:.0f} s per phase, 2-core machine, load in-process)")
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
    asyncio.run(run(parser.parse_args().seconds))


if __name__ == "__main__":
    main()
