"""The service running as a role that may only SELECT and INSERT; migrations as the owner."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from pql_support import OPERATOR, md, record
from psycopg import sql
from psycopg.conninfo import make_conninfo

from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc.pql.v1 import receipt_log_service_pb2 as log_pb
from mc.pql.v1 import receipt_log_service_pb2_grpc as log_grpc
from mc_common.server import start_server
from mc_common.signing import PemSigner
from mc_common.testing.identity import TestTrustDomain
from mc_pql.app import PqlApp
from mc_pql.settings import PqlSettings


@pytest.fixture
def runtime_role(pg_dsn: str) -> Iterator[str]:
    role = f"mc_pql_rt_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
async def role_app(
    pql_settings: PqlSettings, pg_dsn: str, runtime_role: str
) -> AsyncIterator[tuple[PqlApp, str]]:
    runtime_dsn = make_conninfo(pg_dsn, user=runtime_role)
    settings = pql_settings.model_copy(
        update={"migration_dsn": pg_dsn, "postgres_dsn": runtime_dsn, "runtime_role": runtime_role}
    )
    app = await PqlApp.create(settings)
    try:
        yield app, runtime_dsn
    finally:
        await app.close()


async def test_the_runtime_role_records_and_serves_but_cannot_rewrite(
    role_app: tuple[PqlApp, str],
    mc_trust_domain: TestTrustDomain,
) -> None:
    app, runtime_dsn = role_app
    server = await start_server(app.settings, app.spec())
    try:
        async with mc_trust_domain.channel(server.address) as channel:
            stub = svc_grpc.ProvenanceServiceStub(channel)
            stored = (await stub.RecordReceipt(record("e1", 1), metadata=md("acme"))).receipt
            got = await stub.GetReceipt(
                svc.GetReceiptRequest(digest=stored.digest), metadata=md("acme")
            )
            assert got.receipt.verification.valid
            checkpoint = await log_grpc.ReceiptLogServiceStub(channel).GetCheckpoint(
                log_pb.GetCheckpointRequest(), metadata=md("acme")
            )
            assert checkpoint.checkpoint.size == 1
            key = PemSigner.generate().public_key_pem().decode()
            registered = await stub.RegisterSigningKey(
                svc.RegisterSigningKeyRequest(tenant="acme", public_key_pem=key),
                metadata=OPERATOR,
            )
            revoked = await stub.RevokeSigningKey(
                svc.RevokeSigningKeyRequest(key_id=registered.key.key_id), metadata=OPERATOR
            )
            assert revoked.key.revoked
    finally:
        await server.stop(0)
    refused = [
        "ALTER TABLE pql.receipts DISABLE TRIGGER USER",
        "ALTER TABLE pql.receipt_log DISABLE TRIGGER receipt_log_no_update_delete",
        "SET session_replication_role = replica",
        "UPDATE pql.receipts SET execution_id = 'x'",
        "DELETE FROM pql.receipt_log",
        "DELETE FROM pql.log_checkpoints",
        "TRUNCATE pql.receipts",
        "DROP TABLE pql.receipts",
        "CREATE TABLE pql.sneaky (x int)",
        "UPDATE pql.signing_keys SET tenant = 'other'",
        "DELETE FROM pql.executions",
        "UPDATE pql.signing_keys SET revoked_at = NULL",
    ]
    for statement in refused:
        with (
            psycopg.connect(runtime_dsn, autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute(statement)  # type: ignore[arg-type]
