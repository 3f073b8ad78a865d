"""Receipts altered behind the service's back are reported as failing, never served as valid.

Postgres refuses UPDATE and DELETE on receipts, so these tests play an attacker with superuser
rights: `session_replication_role = replica` skips the append-only triggers.
"""

from __future__ import annotations

import base64
import json

import psycopg
import pytest
from pql_support import md, record

from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_pql.app import PqlApp

Stub = svc_grpc.ProvenanceServiceStub


async def tamper(app: PqlApp, sql: str, *params: object) -> None:
    async with app.pool.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(sql, params)


async def seed(stub: Stub, n: int) -> list[svc.RecordReceiptResponse]:
    return [await stub.RecordReceipt(record(f"e{i}", i), metadata=md("acme")) for i in range(n)]


async def test_database_refuses_update_and_delete(stub: Stub, pql_app: PqlApp) -> None:
    await seed(stub, 1)
    async with pql_app.pool.connection() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("UPDATE receipts SET execution_id = 'x'")
    async with pql_app.pool.connection() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("DELETE FROM receipts")
    async with pql_app.pool.connection() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("TRUNCATE receipts")


async def test_edited_payload_is_reported_not_served(stub: Stub, pql_app: PqlApp) -> None:
    [first] = await seed(stub, 1)
    envelope = json.loads(first.receipt.envelope)
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["cost"]["amount_micros"] = 1  # make it cheaper, keep the signature
    envelope["payload"] = base64.b64encode(
        json.dumps(statement, separators=(",", ":"), sort_keys=True).encode()
    ).decode()
    await tamper(
        pql_app,
        "UPDATE receipts SET envelope = %s WHERE tenant = 'acme' AND sequence = 1",
        json.dumps(envelope).encode(),
    )
    got = await stub.GetReceipt(
        svc.GetReceiptRequest(digest=first.receipt.digest), metadata=md("acme")
    )
    assert not got.receipt.verification.valid
    codes = {f.code for f in got.receipt.verification.failures}
    assert {"SIGNATURE_INVALID", "DIGEST_MISMATCH"} <= codes
    assert not got.receipt.HasField("content"), "tampered content must not be served"
    chain = await stub.VerifyChain(svc.VerifyChainRequest(), metadata=md("acme"))
    assert not chain.verification.valid and chain.first_broken_sequence == 1


async def test_flipped_signature_byte(stub: Stub, pql_app: PqlApp) -> None:
    [first] = await seed(stub, 1)
    envelope = json.loads(first.receipt.envelope)
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[-1] ^= 0x01
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    await tamper(
        pql_app,
        "UPDATE receipts SET envelope = %s WHERE tenant = 'acme' AND sequence = 1",
        json.dumps(envelope).encode(),
    )
    got = await stub.GetReceipt(
        svc.GetReceiptRequest(digest=first.receipt.digest), metadata=md("acme")
    )
    assert [f.code for f in got.receipt.verification.failures] == ["SIGNATURE_INVALID"]
    listed = await stub.ListReceipts(svc.ListReceiptsRequest(), metadata=md("acme"))
    assert not listed.receipts[0].verification.valid


async def test_edited_column_is_caught(stub: Stub, pql_app: PqlApp) -> None:
    [first] = await seed(stub, 1)
    await tamper(
        pql_app,
        "UPDATE receipts SET execution_id = 'someone-else' WHERE tenant = 'acme' AND sequence = 1",
    )
    got = await stub.GetReceipt(
        svc.GetReceiptRequest(digest=first.receipt.digest), metadata=md("acme")
    )
    assert [f.code for f in got.receipt.verification.failures] == ["ROW_MISMATCH"]


async def test_removed_link_breaks_the_chain_where_it_was(stub: Stub, pql_app: PqlApp) -> None:
    receipts = await seed(stub, 5)
    await tamper(pql_app, "DELETE FROM receipts WHERE tenant = 'acme' AND sequence = 3")
    chain = await stub.VerifyChain(svc.VerifyChainRequest(), metadata=md("acme"))
    assert not chain.verification.valid
    assert chain.first_broken_sequence == 3
    assert "SEQUENCE_GAP" in {f.code for f in chain.verification.failures}
    assert chain.receipts_checked == 4
    after_gap = await stub.VerifyReceipt(
        svc.VerifyReceiptRequest(digest=receipts[3].receipt.digest), metadata=md("acme")
    )
    assert [f.code for f in after_gap.verification.failures] == ["PREDECESSOR_MISSING"]


async def test_other_tenants_chain_is_unaffected(stub: Stub, pql_app: PqlApp) -> None:
    await seed(stub, 2)
    await stub.RecordReceipt(record("b1"), metadata=md("beta"))
    await tamper(pql_app, "DELETE FROM receipts WHERE tenant = 'acme' AND sequence = 1")
    beta = await stub.VerifyChain(svc.VerifyChainRequest(), metadata=md("beta"))
    assert beta.verification.valid and beta.receipts_checked == 1
    acme = await stub.VerifyChain(svc.VerifyChainRequest(), metadata=md("acme"))
    assert acme.first_broken_sequence == 1
