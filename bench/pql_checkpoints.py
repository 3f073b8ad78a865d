"""Benchmark: what issuing checkpoints costs the recording of receipts.

Runs two `mc-pql` processes on one database, the same code and settings except that one issues
checkpoints (every 0.5 s for every tenant that grew: sign, store, publish when Kafka is set)
and the other does not (the baseline, MC_PQL_CHECKPOINTS_ENABLED=false), and drives the
recording benchmark's unary and batched phases at each in turn, alternating, twice. Target:
recording with checkpoints keeps >= 90% of the baseline's throughput.

Usage: uv run python bench/pql_checkpoints.py [--seconds 8] [--tenants 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "services" / "pql" / "tests"))

import psycopg
from common import Channels, Throughput, closed_loop, free_port, start_child
from pql_support import record

from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_common.signing import PemSigner
from mc_common.testing import infra


async def run(seconds: float, tenants: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="mc-bench-cp-"))
    admin = infra.postgres_dsn()
    db = infra.unique_name("mc_bench_cp")
    dsn = infra.create_database(admin, db)
    key, cp_key = work / "key.pem", work / "cp.pem"
    PemSigner.generate().save(key)
    cp_key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    names = [f"cp-{i}" for i in range(tenants)]
    requests = [record(f"exec-{i}", i) for i in range(1000)]
    batch = svc.RecordReceiptsRequest(receipts=requests[:100])

    async def start(enabled: bool) -> object:
        port = free_port()
        return await start_child(
            [sys.executable, "-m", "mc_pql.main"],
            {
                "MC_PQL_POSTGRES_DSN": dsn,
                "MC_PQL_SIGNING_KEY_PATH": str(key),
                "MC_PQL_CHECKPOINT_KEY_PATH": str(cp_key),
                "MC_PQL_CHECKPOINTS_ENABLED": "true" if enabled else "false",
                "MC_PQL_GRPC_PORT": str(port),
                "MC_PQL_LOG_LEVEL": "WARNING",
                "MC_PQL_POOL_MAX_SIZE": "8",
            },
            port,
            work / f"pql-{enabled}.log",
        )

    baseline = await start(False)
    issuing = await start(True)
    results: dict[tuple[str, bool], list[Throughput]] = {}
    checkpoints_seen = 0
    try:
        async with (
            Channels(baseline.address, 1) as base_ch,  # type: ignore[attr-defined]
            Channels(issuing.address, 1) as cp_ch,  # type: ignore[attr-defined]
        ):
            stubs = {
                False: svc_grpc.ProvenanceServiceStub(base_ch[0]),
                True: svc_grpc.ProvenanceServiceStub(cp_ch[0]),
            }

            # Each server records its own tenants, so neither waits on the other's locks.
            def tenant(enabled: bool, i: int) -> str:
                return f"{names[i % len(names)]}-{'on' if enabled else 'off'}"

            servers = {False: baseline, True: issuing}
            for _round in range(2):
                for enabled in (False, True):
                    stub = stubs[enabled]
                    cpu = servers[enabled].cpu_seconds  # type: ignore[attr-defined]

                    async def unary(i: int, stub: object = stub, enabled: bool = enabled) -> int:
                        await stub.RecordReceipt(  # type: ignore[attr-defined]
                            requests[i % 1000], metadata=[("x-mc-tenant", tenant(enabled, i))]
                        )
                        return 1

                    async def batched(i: int, stub: object = stub, enabled: bool = enabled) -> int:
                        await stub.RecordReceipts(  # type: ignore[attr-defined]
                            batch, metadata=[("x-mc-tenant", tenant(enabled, i))]
                        )
                        return 100

                    results.setdefault(("unary", enabled), []).append(
                        await closed_loop(unary, 32, seconds, server_cpu=cpu)
                    )
                    results.setdefault(("batched", enabled), []).append(
                        await closed_loop(batched, 4, seconds, server_cpu=cpu)
                    )
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pql.log_checkpoints WHERE tenant LIKE '%-on'"
            ).fetchone()
            checkpoints_seen = int(row[0]) if row else 0
    finally:
        baseline.stop()  # type: ignore[attr-defined]
        issuing.stop()  # type: ignore[attr-defined]
        infra.drop_database(admin, db)
    load = os.getloadavg()[0]
    print(
        f"pql checkpoint issuing vs none ({seconds:.0f} s per phase, alternating, 2 rounds, "
        f"{tenants} tenants per server, load average {load:.2f})"
    )
    for phase in ("unary", "batched"):
        off = sum(t.items_per_s for t in results[(phase, False)]) / 2
        on = sum(t.items_per_s for t in results[(phase, True)]) / 2
        cpu_off = sum(t.server_cpu_s for t in results[(phase, False)]) / sum(
            t.items for t in results[(phase, False)]
        )
        cpu_on = sum(t.server_cpu_s for t in results[(phase, True)]) / sum(
            t.items for t in results[(phase, True)]
        )
        print(
            f"  {phase:8s} baseline {off:8.0f} receipts/s   with checkpoints {on:8.0f} receipts/s"
            f"   = {on / off:.0%} of baseline  (target >= 90%)"
        )
        print(
            f"  {'':8s} server CPU per receipt: baseline {cpu_off * 1000:.3f} ms, with "
            f"checkpoints {cpu_on * 1000:.3f} ms = {cpu_on / cpu_off:.0%} (the figure that "
            "hardly moves when the machine is busy)"
        )
    phases_s = 2 * 2 * seconds
    print(
        f"  checkpoints issued while recording: {checkpoints_seen} "
        f"(~{checkpoints_seen / phases_s:.1f}/s over {tenants} active tenants)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--tenants", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.tenants))


if __name__ == "__main__":
    main()
