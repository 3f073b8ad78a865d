"""`maestro receipts verify / keys / export / verify --offline` against a real service and
Postgres, with the database owner removing and rewriting rows behind the service."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pql_support import md, record

from maestro_cli.main import main
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_common.server import RunningServer
from mc_common.testing.identity import TestTrustDomain
from mc_pql.app import PqlApp
from mc_pql.settings import PqlSettings

Stub = svc_grpc.ProvenanceServiceStub


@pytest.fixture
def pql_settings(pql_settings: PqlSettings, mc_trust_domain: TestTrustDomain) -> PqlSettings:
    """Serves as the `pql` workload: the CLI verifies that name, as in production."""
    return pql_settings.model_copy(update={"identity": mc_trust_domain.settings("pql")})


@pytest.fixture
async def stub(pql_server: RunningServer, mc_trust_domain: TestTrustDomain) -> AsyncIterator[Stub]:
    async with mc_trust_domain.channel(pql_server.address, server="pql") as channel:
        yield svc_grpc.ProvenanceServiceStub(channel)


@pytest.fixture(autouse=True)
def cli_as_gateway(monkeypatch: pytest.MonkeyPatch, mc_trust_domain: TestTrustDomain) -> None:
    for key, value in mc_trust_domain.env("gateway").items():
        monkeypatch.setenv(key, value)


async def maestro(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def seed(stub: Stub, start: int, n: int) -> None:
    for i in range(start, start + n):
        await stub.RecordReceipt(record(f"e{i}", i), metadata=md("acme"))


async def owner(app: PqlApp, *statements: str) -> None:
    """Run `statements` as the database owner, past the append-only triggers."""
    async with app.pool.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        for statement in statements:
            await conn.execute(statement)  # type: ignore[arg-type]


def verify_args(server: RunningServer, data: Path) -> list[str]:
    return ["receipts", "verify", "--tenant", "acme", "--address", server.address,
            "--data-dir", str(data)]  # fmt: skip


async def test_verify_keeps_the_checkpoint_and_detects_deleted_newest_receipts(
    stub: Stub, pql_server: RunningServer, pql_app: PqlApp, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    args = verify_args(pql_server, tmp_path)
    await seed(stub, 0, 5)
    assert await maestro(*args) == 0
    saved = tmp_path / "receipts" / "acme.checkpoint"
    assert saved.read_text().split("\n")[1] == "5"
    await seed(stub, 5, 3)
    assert await maestro(*args) == 0
    assert saved.read_text().split("\n")[1] == "8"
    await owner(pql_app, "DELETE FROM receipts WHERE tenant = 'acme' AND sequence > 6")
    assert await maestro(*args) == 1
    assert "RECEIPT_MISSING" in capsys.readouterr().out
    assert saved.read_text().split("\n")[1] == "8", "a broken log never replaces the checkpoint"


async def test_verify_detects_truncation_and_rewriting_of_the_whole_log(
    stub: Stub, pql_server: RunningServer, pql_app: PqlApp, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    args = verify_args(pql_server, tmp_path)
    await seed(stub, 0, 6)
    assert await maestro(*args) == 0
    # The owner removes the last receipts everywhere, the service's own records included.
    await owner(
        pql_app,
        "DELETE FROM receipts WHERE tenant = 'acme' AND sequence > 4",
        "DELETE FROM receipt_log WHERE tenant = 'acme' AND sequence > 4",
        "DELETE FROM log_checkpoints WHERE tenant = 'acme' AND size > 4",
        "DELETE FROM receipt_facts WHERE tenant = 'acme' AND sequence > 4",
    )
    pql_app.provenance._writer._heads.clear()  # a restarted replica: no cached heads
    pql_app.provenance._writer._frontiers.clear()
    assert await maestro(*args) == 1
    assert "TRUNCATED" in capsys.readouterr().out
    # ... and writes other receipts in their place: a fork of what the client saw.
    await seed(stub, 100, 4)
    assert await maestro(*args) == 1
    assert "FORKED or REWRITTEN" in capsys.readouterr().out


async def test_a_different_checkpoint_key_is_refused(
    stub: Stub, pql_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(stub, 0, 1)
    other = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    args = [*verify_args(pql_server, tmp_path), "--checkpoint-key", other]
    assert await maestro(*args) == 1
    assert "does not verify" in capsys.readouterr().out


async def test_export_then_verify_offline_with_only_the_published_keys(
    stub: Stub, pql_server: RunningServer, tmp_path: Path
) -> None:
    await seed(stub, 0, 7)
    out = tmp_path / "export"
    common = ["--tenant", "acme", "--address", pql_server.address]
    assert await maestro("receipts", "keys", *common, "--out", str(tmp_path / "keys.json")) == 0
    keys = json.loads((tmp_path / "keys.json").read_text())
    assert keys["receipt_keys"][0]["jwk"]["alg"] == "ES256"
    assert keys["checkpoint_verifier_key"].startswith("maestro-conductor.dev/pql+")
    assert await maestro("receipts", "export", *common, "--out", str(out)) == 0
    offline = ["receipts", "verify", "--tenant", "acme", "--offline", str(out)]
    assert await maestro(*offline) == 0
    # One receipt swapped for another one's: its signature is fine, the log's root is not.
    lines = (out / "receipts.jsonl").read_text().splitlines()
    first, second = json.loads(lines[0]), json.loads(lines[1])
    first["envelope"], second["envelope"] = second["envelope"], first["envelope"]
    lines[0], lines[1] = json.dumps(first), json.dumps(second)
    (out / "receipts.jsonl").write_text("\n".join(lines) + "\n")
    assert await maestro(*offline) == 1
    # Dropping the last receipt is caught as well.
    (out / "receipts.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert await maestro(*offline) == 1
