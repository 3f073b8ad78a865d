"""Recording, reading and verifying receipts through a real gRPC server and Postgres."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import pytest
from google.protobuf.descriptor import Descriptor
from google.rpc import error_details_pb2
from pql_support import OPERATOR, content, md, record

from mc.pql.v1 import provenance_pb2 as pb
from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_common.errors import status_details
from mc_common.receipts import ReceiptBody
from mc_common.signing import PemSigner
from mc_pql.app import PqlApp
from mc_pql.client_statement import CLIENT_SUBJECT, sign_client_statement

Stub = svc_grpc.ProvenanceServiceStub


def bad_fields(err: grpc.aio.AioRpcError) -> list[str]:
    return [
        v.field
        for d in status_details(err)
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
    ]


async def count_receipts(app: PqlApp, tenant: str) -> int:
    async with app.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM receipts WHERE tenant = %s", (tenant,))
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def test_record_get_list_and_verify_chain(stub: Stub) -> None:
    first = (await stub.RecordReceipt(record("e1", 1), metadata=md("acme"))).receipt
    second = (await stub.RecordReceipt(record("e2", 2), metadata=md("acme"))).receipt
    assert (first.sequence, first.previous_digest) == (1, "")
    assert (second.sequence, second.previous_digest) == (2, first.digest)
    assert first.verification.valid and first.content.execution_id == "e1"

    got = (
        await stub.GetReceipt(svc.GetReceiptRequest(digest=second.digest), metadata=md("acme"))
    ).receipt
    assert got.verification.valid
    assert got.content == second.content
    assert got.content.cost.amount_micros == 1_250_002

    page = await stub.ListReceipts(svc.ListReceiptsRequest(page_size=1), metadata=md("acme"))
    assert [r.sequence for r in page.receipts] == [1] and page.next_page_token
    page2 = await stub.ListReceipts(
        svc.ListReceiptsRequest(page_size=1, page_token=page.next_page_token), metadata=md("acme")
    )
    assert [r.sequence for r in page2.receipts] == [2] and not page2.next_page_token

    chain = await stub.VerifyChain(svc.VerifyChainRequest(), metadata=md("acme"))
    assert chain.verification.valid, chain.verification.failures
    assert (chain.receipts_checked, chain.head_digest) == (2, second.digest)
    one = await stub.VerifyReceipt(
        svc.VerifyReceiptRequest(digest=second.digest), metadata=md("acme")
    )
    assert one.verification.valid


async def test_batch_is_chained_in_order(stub: Stub) -> None:
    batch = svc.RecordReceiptsRequest(receipts=[record(f"e{i}", i) for i in range(5)])
    receipts = (await stub.RecordReceipts(batch, metadata=md("acme"))).receipts
    assert [r.sequence for r in receipts] == [1, 2, 3, 4, 5]
    for before, after in itertools.pairwise(receipts):
        assert after.previous_digest == before.digest


async def test_concurrent_writers_never_fork_the_chain(stub: Stub, pql_app: PqlApp) -> None:
    await asyncio.gather(
        *(stub.RecordReceipt(record(f"e{i}", i), metadata=md("acme")) for i in range(40))
    )
    chain = await stub.VerifyChain(svc.VerifyChainRequest(), metadata=md("acme"))
    assert chain.verification.valid and chain.receipts_checked == 40
    assert await count_receipts(pql_app, "acme") == 40


async def test_tenants_cannot_see_each_other(stub: Stub) -> None:
    mine = (await stub.RecordReceipt(record("secret"), metadata=md("tenant-a"))).receipt
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetReceipt(svc.GetReceiptRequest(digest=mine.digest), metadata=md("tenant-b"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.VerifyReceipt(
            svc.VerifyReceiptRequest(digest=mine.digest), metadata=md("tenant-b")
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListReceipts(svc.ListReceiptsRequest(), metadata=md("tenant-b"))
    assert list(listed.receipts) == []
    chain = await stub.VerifyChain(svc.VerifyChainRequest(), metadata=md("tenant-b"))
    assert chain.receipts_checked == 0 and chain.head_digest == ""
    # Tenant B's own chain starts at 1: A's receipts are not even counted.
    theirs = (await stub.RecordReceipt(record("x"), metadata=md("tenant-b"))).receipt
    assert theirs.sequence == 1
    # A page token of tenant A is useless to tenant B.
    page = await stub.ListReceipts(svc.ListReceiptsRequest(page_size=1), metadata=md("tenant-a"))
    await stub.RecordReceipt(record("more"), metadata=md("tenant-a"))
    page = await stub.ListReceipts(svc.ListReceiptsRequest(page_size=1), metadata=md("tenant-a"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListReceipts(
            svc.ListReceiptsRequest(page_token=page.next_page_token), metadata=md("tenant-b")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_missing_tenant_is_refused(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipt(record())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_malformed_content_names_each_field_and_stores_nothing(
    stub: Stub, pql_app: PqlApp
) -> None:
    bad = content("e1")
    bad.package.digest = "not-a-digest"
    bad.steps[0].status = "exploded"
    bad.cost.currency = "usd"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipt(svc.RecordReceiptRequest(content=bad), metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(bad_fields(err.value)) == {
        "content.package.digest",
        "content.steps[0].status",
        "content.cost.currency",
    }
    # Rules the proto cannot express (finished before started) are domain validation errors.
    backwards = content("e1")
    backwards.finished_at.seconds = backwards.started_at.seconds - 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipt(svc.RecordReceiptRequest(content=backwards), metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == ["content"]
    # One bad receipt in a batch rejects the whole batch.
    batch = svc.RecordReceiptsRequest(
        receipts=[record("ok"), svc.RecordReceiptRequest(content=bad)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipts(batch, metadata=md("acme"))
    assert "receipts[1].content.package.digest" in bad_fields(err.value)
    assert await count_receipts(pql_app, "acme") == 0


async def test_oversized_input_is_rejected(stub: Stub, pql_app: PqlApp) -> None:
    huge = svc.RecordReceiptRequest(signed_envelope=b"{" + b" " * 300_000 + b"}")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipt(huge, metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == ["signed_envelope"]
    too_many = svc.RecordReceiptsRequest(receipts=[record(f"e{i}") for i in range(1001)])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipts(too_many, metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await count_receipts(pql_app, "acme") == 0


def client_body(tenant: str) -> ReceiptBody:
    return ReceiptBody.model_validate(
        {
            "tenant": tenant,
            "execution_id": "client-exec",
            "package": {"name": "acme/etl", "version": "1.0.0", "digest": "cd" * 32},
            "steps": [],
            "policy_decisions": [],
            "cost": {"currency": "EUR", "amount_micros": 42},
            "timing": {"started_at": "2026-11-01T12:00:00Z", "finished_at": "2026-11-01T12:00:01Z"},
            "region": "eu-west-1",
            "recorded_at": "2026-11-01T12:00:02Z",
        }
    )


async def test_client_signed_receipts(stub: Stub, pql_app: PqlApp) -> None:
    client_key = PemSigner.generate()
    envelope = sign_client_statement(client_body("acme"), client_key).to_json().encode()
    request = svc.RecordReceiptRequest(signed_envelope=envelope)

    # Not registered yet: refused, nothing stored.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipt(request, metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await count_receipts(pql_app, "acme") == 0

    register = svc.RegisterSigningKeyRequest(
        tenant="acme", public_key_pem=client_key.public_key_pem().decode()
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:  # tenants cannot register keys themselves
        await stub.RegisterSigningKey(register, metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    key = (await stub.RegisterSigningKey(register, metadata=OPERATOR)).key
    assert key.key_id == client_key.key_id

    stored = (await stub.RecordReceipt(request, metadata=md("acme"))).receipt
    assert stored.client_key_id == client_key.key_id and stored.verification.valid
    assert CLIENT_SUBJECT in [s.name for s in stored.content.subjects]
    assert stored.content.cost.currency == "EUR"

    # The same statement signed by the key is refused for another tenant.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipt(request, metadata=md("other"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # A flipped signature byte is refused.
    tampered = bytearray(envelope)
    at = tampered.index(b'"sig":"') + 12
    tampered[at] = ord("A") if tampered[at] != ord("A") else ord("B")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipt(
            svc.RecordReceiptRequest(signed_envelope=bytes(tampered)), metadata=md("acme")
        )
    assert err.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)

    # Revoked keys sign nothing new, but what they signed stays verifiable.
    await stub.RevokeSigningKey(svc.RevokeSigningKeyRequest(key_id=key.key_id), metadata=OPERATOR)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipt(request, metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    again = await stub.GetReceipt(svc.GetReceiptRequest(digest=stored.digest), metadata=md("acme"))
    assert again.receipt.verification.valid
    assert await count_receipts(pql_app, "acme") == 1


async def test_garbage_envelope_is_invalid_argument(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipt(
            svc.RecordReceiptRequest(signed_envelope=b"not json at all"), metadata=md("acme")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == ["signed_envelope"]


async def test_content_served_when_recording_is_the_signed_content(stub: Stub) -> None:
    # Made from the request when recording, from the signed statement when read back.
    detailed = content("e1", 1)
    detailed.started_at.nanos = 123_456_789  # receipts keep microseconds
    detailed.steps[0].finished_at.nanos = 999_999_999
    step = detailed.steps.add(name="load", status="failed")
    step.started_at.CopyFrom(detailed.steps[0].finished_at)
    step.finished_at.CopyFrom(detailed.finished_at)
    detailed.subjects.add(name="dataset", sha256="cd" * 32)
    client_key = PemSigner.generate()
    await stub.RegisterSigningKey(
        svc.RegisterSigningKeyRequest(
            tenant="acme", public_key_pem=client_key.public_key_pem().decode()
        ),
        metadata=OPERATOR,
    )
    signed = sign_client_statement(client_body("acme"), client_key).to_json().encode()
    batch = svc.RecordReceiptsRequest(
        receipts=[
            svc.RecordReceiptRequest(content=detailed),
            record("e2", 2),
            svc.RecordReceiptRequest(signed_envelope=signed),
        ]
    )
    written = list((await stub.RecordReceipts(batch, metadata=md("acme"))).receipts)
    written.append((await stub.RecordReceipt(record("e3", 3), metadata=md("acme"))).receipt)
    for receipt in written:
        read = await stub.GetReceipt(
            svc.GetReceiptRequest(digest=receipt.digest), metadata=md("acme")
        )
        assert receipt == read.receipt
    assert written[0].content.started_at.nanos == 123_456_000
    assert [s.name for s in written[0].content.subjects] == ["dataset"]


def test_every_field_of_receipt_content_is_signed() -> None:
    # Recording serves the request's own content back (see `convert.receipt_to_proto`), which
    # is right only while the receipt signs every field of it. A new field must be signed
    # (`content_to_submission`) and served (`statement_to_content`) before it is listed here.
    def fields(message: Descriptor) -> set[str]:
        out = set()
        for f in message.fields:
            out.add(f"{message.name}.{f.name}")
            if f.message_type is not None and f.message_type.full_name.startswith("mc."):
                out |= fields(f.message_type)
        return out

    assert fields(pb.ReceiptContent.DESCRIPTOR) == {
        "ReceiptContent.execution_id",
        "ReceiptContent.package",
        "ReceiptContent.subjects",
        "ReceiptContent.steps",
        "ReceiptContent.policy_decisions",
        "ReceiptContent.cost",
        "ReceiptContent.started_at",
        "ReceiptContent.finished_at",
        "ReceiptContent.region",
        "PackageRef.name",
        "PackageRef.version",
        "PackageRef.digest",
        "Subject.name",
        "Subject.sha256",
        "Step.name",
        "Step.status",
        "Step.started_at",
        "Step.finished_at",
        "Step.outputs",
        "StepOutput.name",
        "StepOutput.sha256",
        "DecisionRef.decision_id",
        "DecisionRef.policy",
        "DecisionRef.rule",
        "DecisionRef.allow",
        "DecisionRef.reason",
        "Cost.currency",
        "Cost.amount_micros",
    }
