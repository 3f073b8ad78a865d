"""Fixtures of the provenance service tests: a real database per test, a real gRPC server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_common.server import RunningServer, start_server
from mc_common.signing import PemSigner
from mc_common.testing.identity import TestTrustDomain
from mc_pql.app import PqlApp
from mc_pql.settings import PqlSettings


@pytest.fixture
def service_key(tmp_path: Path) -> Path:
    path = tmp_path / "service-key.pem"
    PemSigner.generate().save(path)
    return path


@pytest.fixture
def checkpoint_key(tmp_path: Path) -> Path:
    path = tmp_path / "checkpoint-key.pem"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture
def pql_settings(pg_dsn: str, service_key: Path, checkpoint_key: Path) -> PqlSettings:
    return PqlSettings(
        postgres_dsn=pg_dsn,
        signing_key_path=service_key,
        checkpoint_key_path=checkpoint_key,
        pool_max_size=4,
        # Checkpoints are issued on demand only, so a test's database changes only by its own
        # calls (tests of the periodic issuer turn it on).
        checkpoints_enabled=False,
    )


@pytest.fixture
async def pql_app(pql_settings: PqlSettings) -> AsyncIterator[PqlApp]:
    app = await PqlApp.create(pql_settings)
    yield app
    await app.close()


@pytest.fixture
async def pql_server(pql_app: PqlApp, pql_settings: PqlSettings) -> AsyncIterator[RunningServer]:
    running = await start_server(pql_settings, pql_app.spec())
    yield running
    await running.stop(0)


@pytest.fixture
async def stub(
    pql_server: RunningServer, mc_trust_domain: TestTrustDomain
) -> AsyncIterator[svc_grpc.ProvenanceServiceStub]:
    async with mc_trust_domain.channel(pql_server.address) as channel:
        yield svc_grpc.ProvenanceServiceStub(channel)
