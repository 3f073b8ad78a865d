"""`MC_PQL_WORKERS`: several server processes on one port, one chain per tenant across them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from pql_support import md, record
from pydantic import ValidationError

from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_common.signing import PemSigner
from mc_common.testing import infra
from mc_common.testing.identity import TestTrustDomain
from mc_common.testing.servers import wait_for_serving
from mc_pql.settings import PqlSettings


def test_workers_need_a_fixed_port(service_key: Path) -> None:
    with pytest.raises(ValidationError, match="fixed grpc_port"):
        PqlSettings(signing_key_path=service_key, workers=2, grpc_port=0)


async def test_workers_share_the_port_and_the_chains(
    pg_dsn: str, tmp_path: Path, mc_trust_domain: TestTrustDomain
) -> None:
    key = tmp_path / "key.pem"
    PemSigner.generate().save(key)
    port = infra.free_port()
    env = {
        **os.environ,
        "MC_PQL_POSTGRES_DSN": pg_dsn,
        "MC_PQL_SIGNING_KEY_PATH": str(key),
        "MC_PQL_GRPC_PORT": str(port),
        "MC_PQL_WORKERS": "2",
    }
    log = tmp_path / "pql.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mc_pql.main"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        # Separate connections (no shared subchannels), so the kernel spreads them over workers.
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = [mc_trust_domain.channel(f"127.0.0.1:{port}", options=options) for _ in range(8)]
        for channel in channels:
            await _until_serving(channel, proc, log)
        assert len(_workers(proc.pid)) == 2
        stubs = [svc_grpc.ProvenanceServiceStub(c) for c in channels]
        await asyncio.gather(
            *(
                stubs[i % len(stubs)].RecordReceipt(record(f"e{i}", i), metadata=md("acme"))
                for i in range(40)
            )
        )
        chain = await stubs[0].VerifyChain(svc.VerifyChainRequest(), metadata=md("acme"))
        assert chain.verification.valid and chain.receipts_checked == 40
        for channel in channels:
            await channel.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0, log.read_text()


async def _until_serving(
    channel: grpc.aio.Channel, proc: subprocess.Popen[bytes], log: Path
) -> None:
    await wait_for_serving(channel, process=proc, log=log)


def _workers(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
