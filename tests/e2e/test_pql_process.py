"""End to end: the provenance service as its own process, spoken to over gRPC."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pql_support import md, record

from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_common.signing import PemSigner
from mc_common.testing.identity import TestTrustDomain


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def pql_process(
    pg_dsn: str, tmp_path: Path, mc_trust_domain: TestTrustDomain
) -> AsyncIterator[str]:
    key = tmp_path / "key.pem"
    PemSigner.generate().save(key)
    port = free_port()
    env = {
        **os.environ,
        "MC_PQL_POSTGRES_DSN": pg_dsn,
        "MC_PQL_SIGNING_KEY_PATH": str(key),
        "MC_PQL_GRPC_PORT": str(port),
        "MC_PQL_METRICS_PORT": str(free_port()),
    }
    log = (tmp_path / "pql.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mc_pql.main"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    address = f"127.0.0.1:{port}"
    try:
        async with mc_trust_domain.channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(300):
                if proc.poll() is not None:
                    raise AssertionError((tmp_path / "pql.log").read_text())
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("mc-pql did not become healthy")
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        assert code == 0, (tmp_path / "pql.log").read_text()


async def test_record_and_verify_over_the_wire(
    pql_process: str, mc_trust_domain: TestTrustDomain
) -> None:
    async with mc_trust_domain.channel(pql_process) as channel:
        stub = svc_grpc.ProvenanceServiceStub(channel)
        for i in range(3):
            await stub.RecordReceipt(record(f"e{i}", i), metadata=md("acme"))
        chain = await stub.VerifyChain(svc.VerifyChainRequest(), metadata=md("acme"))
        assert chain.verification.valid and chain.receipts_checked == 3
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.VerifyChain(svc.VerifyChainRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
