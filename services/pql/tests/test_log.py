"""The per-tenant receipt log over gRPC against real Postgres: checkpoints, proofs, audits, and
what removing rows as the database owner does to them."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pql_support import md, record
from sigstore._internal import merkle as sigstore_merkle

from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc.pql.v1 import receipt_log_service_pb2 as log_pb
from mc.pql.v1 import receipt_log_service_pb2_grpc as log_grpc
from mc_common.receipts.merkle import leaf_hash, verify_consistency, verify_inclusion
from mc_common.receipts.note import NoteVerifier, open_checkpoint
from mc_common.server import RunningServer
from mc_common.testing.identity import TestTrustDomain
from mc_pql.app import PqlApp
from mc_pql.settings import PqlSettings

Stub = svc_grpc.ProvenanceServiceStub
LogStub = log_grpc.ReceiptLogServiceStub


@pytest.fixture
async def log_stub(
    pql_server: RunningServer, mc_trust_domain: TestTrustDomain
) -> AsyncIterator[LogStub]:
    async with mc_trust_domain.channel(pql_server.address) as channel:
        yield log_grpc.ReceiptLogServiceStub(channel)


async def tamper(app: PqlApp, sql: str, *params: object) -> None:
    """As the database owner, past the append-only triggers."""
    async with app.pool.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(sql, params)


async def seed(stub: Stub, tenant: str, start: int, n: int) -> list[str]:
    digests = []
    for i in range(start, start + n):
        reply = await stub.RecordReceipt(record(f"e{i}", i), metadata=md(tenant))
        digests.append(reply.receipt.digest)
    return digests


async def verifier(log_stub: LogStub, tenant: str = "acme") -> NoteVerifier:
    keys = await log_stub.GetVerificationKeys(
        log_pb.GetVerificationKeysRequest(), metadata=md(tenant)
    )
    return NoteVerifier.parse(keys.checkpoint_verifier_key)


async def checkpoint(log_stub: LogStub, tenant: str = "acme") -> tuple[int, bytes]:
    reply = await log_stub.GetCheckpoint(log_pb.GetCheckpointRequest(), metadata=md(tenant))
    parsed, _ = open_checkpoint(reply.checkpoint.note, await verifier(log_stub, tenant))
    assert parsed.origin == f"maestro-conductor.dev/pql/{tenant}" == reply.checkpoint.origin
    assert (parsed.size, parsed.root) == (reply.checkpoint.size, reply.checkpoint.root_hash)
    return parsed.size, parsed.root


async def test_inclusion_and_consistency_proofs_verify_against_signed_checkpoints(
    stub: Stub, log_stub: LogStub
) -> None:
    assert await checkpoint(log_stub) == (
        0,
        bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    )
    digests = await seed(stub, "acme", 0, 5)
    await seed(stub, "other", 0, 3)  # another tenant's log is its own tree
    size1, root1 = await checkpoint(log_stub)
    assert size1 == 5
    batch = await stub.RecordReceipts(
        svc.RecordReceiptsRequest(receipts=[record(f"b{i}", 100 + i) for i in range(8)]),
        metadata=md("acme"),
    )
    digests += [r.digest for r in batch.receipts]
    size2, root2 = await checkpoint(log_stub)
    assert size2 == 13
    for index, digest in enumerate(digests):
        proof = await log_stub.GetInclusionProof(
            log_pb.GetInclusionProofRequest(digest=digest), metadata=md("acme")
        )
        assert (proof.leaf_index, proof.tree_size) == (index, 13)
        assert proof.checkpoint.root_hash == root2
        leaf = leaf_hash(bytes.fromhex(digest))
        verify_inclusion(index, 13, leaf, list(proof.hashes), root2)
        # and with sigstore-python's verifier, an independent implementation
        inner, border = sigstore_merkle._decomp_inclusion_proof(index, 13)
        assert inner + border == len(proof.hashes)
        seed_hash = sigstore_merkle._chain_inner(leaf, list(proof.hashes)[:inner], index)
        assert sigstore_merkle._chain_border_right(seed_hash, list(proof.hashes)[inner:]) == root2
    old = await log_stub.GetInclusionProof(
        log_pb.GetInclusionProofRequest(digest=digests[2], tree_size=5), metadata=md("acme")
    )
    verify_inclusion(2, 5, leaf_hash(bytes.fromhex(digests[2])), list(old.hashes), root1)
    consistency = await log_stub.GetConsistencyProof(
        log_pb.GetConsistencyProofRequest(first_size=5, second_size=13), metadata=md("acme")
    )
    verify_consistency(5, 13, root1, root2, list(consistency.hashes))


async def test_bad_proof_requests_get_typed_errors(stub: Stub, log_stub: LogStub) -> None:
    [digest] = await seed(stub, "acme", 0, 1)
    cases = [
        (log_stub.GetInclusionProof, log_pb.GetInclusionProofRequest(digest="ab" * 32)),
        (log_stub.GetInclusionProof, log_pb.GetInclusionProofRequest(digest="xyz")),
        (log_stub.GetInclusionProof, log_pb.GetInclusionProofRequest(digest=digest, tree_size=9)),
        (
            log_stub.GetConsistencyProof,
            log_pb.GetConsistencyProofRequest(first_size=2, second_size=1),
        ),
        (
            log_stub.GetConsistencyProof,
            log_pb.GetConsistencyProofRequest(first_size=0, second_size=2**63),
        ),
        (log_stub.GetLogEntries, log_pb.GetLogEntriesRequest(start=5, end=1)),
    ]
    for method, request in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(request, metadata=md("acme"))
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    # another tenant's receipt is not found in this tenant's log
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await log_stub.GetInclusionProof(
            log_pb.GetInclusionProofRequest(digest=digest), metadata=md("other")
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def audit(log_stub: LogStub, start: int = 0) -> list[log_pb.AuditLogResponse]:
    return [
        m async for m in log_stub.AuditLog(log_pb.AuditLogRequest(start=start), metadata=md("acme"))
    ]


async def test_audit_streams_progress_and_recomputes_the_root(
    stub: Stub, log_stub: LogStub
) -> None:
    await seed(stub, "acme", 0, 4)
    events = await audit(log_stub)
    assert [m.WhichOneof("event") for m in events] == ["progress", "summary"]
    summary = events[-1].summary
    assert summary.valid and summary.root_matches and summary.receipts_checked == 4
    assert summary.checkpoint.size == 4
    incremental = await audit(log_stub, start=3)
    assert incremental[-1].summary.valid and incremental[-1].summary.receipts_checked == 1


async def test_deleting_the_newest_receipts_is_detected_and_never_reuses_a_sequence(
    stub: Stub, log_stub: LogStub, pql_app: PqlApp
) -> None:
    digests = await seed(stub, "acme", 0, 5)
    size, root = await checkpoint(log_stub)
    await tamper(pql_app, "DELETE FROM receipts WHERE tenant = 'acme' AND sequence > 3")
    # The audit from the last checkpoint a client saw finds the hole ...
    events = await audit(log_stub, start=size - 1)
    codes = {m.failure.code for m in events if m.WhichOneof("event") == "failure"}
    assert "RECEIPT_MISSING" in codes and not events[-1].summary.valid
    # ... and the next receipt takes sequence 6, not 4: the log kept 4 and 5.
    [new] = await seed(stub, "acme", 50, 1)
    got = await stub.GetReceipt(svc.GetReceiptRequest(digest=new), metadata=md("acme"))
    assert got.receipt.sequence == 6
    size2, root2 = await checkpoint(log_stub)
    proof = await log_stub.GetConsistencyProof(
        log_pb.GetConsistencyProofRequest(first_size=size, second_size=size2), metadata=md("acme")
    )
    verify_consistency(size, size2, root, root2, list(proof.hashes))
    full = await audit(log_stub)
    assert not full[-1].summary.valid and not full[-1].summary.root_matches
    entries = await log_stub.GetLogEntries(
        log_pb.GetLogEntriesRequest(start=0, end=10), metadata=md("acme")
    )
    assert [e.missing for e in entries.entries] == [False, False, False, True, True, False]
    assert entries.entries[3].digest == digests[3]


async def test_truncating_the_log_itself_is_refused_by_the_checkpoint_signer(
    stub: Stub, log_stub: LogStub, pql_app: PqlApp
) -> None:
    await seed(stub, "acme", 0, 5)
    await checkpoint(log_stub)
    await tamper(pql_app, "DELETE FROM receipts WHERE tenant = 'acme' AND sequence > 3")
    await tamper(pql_app, "DELETE FROM receipt_log WHERE tenant = 'acme' AND sequence > 3")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await log_stub.GetCheckpoint(log_pb.GetCheckpointRequest(), metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "LOG_TRUNCATED" in str(err.value.trailing_metadata())


async def test_unsigned_columns_are_served_apart_and_a_nulled_client_envelope_fails(
    stub: Stub, pql_app: PqlApp
) -> None:
    [digest] = await seed(stub, "acme", 0, 1)
    await tamper(
        pql_app,
        "UPDATE receipts SET recorded_at = '2001-01-01', signer_key_id = %s WHERE tenant = 'acme'",
        "ff" * 32,
    )
    got = (await stub.GetReceipt(svc.GetReceiptRequest(digest=digest), metadata=md("acme"))).receipt
    assert not got.verification.valid
    assert {f.code for f in got.verification.failures} == {"ROW_MISMATCH"}
    assert got.signer_key_id == "" and not got.HasField("recorded_at")
    assert got.unverified.signer_key_id == "ff" * 32
    assert got.unverified.stored_at.ToDatetime().year == 2001


async def test_the_signed_recorded_at_is_served(stub: Stub) -> None:
    reply = await stub.RecordReceipt(record("e1", 1), metadata=md("acme"))
    got = (
        await stub.GetReceipt(
            svc.GetReceiptRequest(digest=reply.receipt.digest), metadata=md("acme")
        )
    ).receipt
    statement = json.loads(base64.b64decode(json.loads(got.envelope)["payload"]))
    assert got.verification.valid
    assert (
        got.recorded_at.ToJsonString()
        .rstrip("Z")
        .startswith(statement["predicate"]["recorded_at"].rstrip("Z")[:19])
    )
    assert got.signer_key_id == json.loads(got.envelope)["signatures"][0]["keyid"]


async def test_the_periodic_issuer_checkpoints_every_tenant_that_grew(
    pql_settings: PqlSettings,
) -> None:
    app = await PqlApp.create(
        pql_settings.model_copy(update={"checkpoints_enabled": True, "checkpoint_interval_s": 0.1})
    )
    try:
        for tenant, n in (("acme", 3), ("globex", 2)):
            for i in range(n):
                await app.provenance.record_receipts(tenant, [_submission(tenant, i)])
        verifier = app.receipt_log.signer.verifier
        async with asyncio.timeout(30):
            while True:
                latest = {
                    t: await app.receipt_log._store.latest_checkpoint(t) for t in ("acme", "globex")
                }
                if all(
                    c is not None and c.size == n
                    for c, n in zip(latest.values(), (3, 2), strict=True)
                ):
                    break
                await asyncio.sleep(0.05)
        for tenant, stored in latest.items():
            assert stored is not None
            parsed, _ = open_checkpoint(stored.note, verifier)
            assert parsed.origin.endswith(f"/{tenant}") and parsed.root == stored.root
    finally:
        await app.close()


def _submission(tenant: str, n: int) -> object:
    from pql_support import content

    from mc_pql import convert

    return convert.content_to_submission(tenant, content(f"p{n}", n), "content")


_U64 = st.one_of(
    st.integers(0, 20), st.integers(0, 2**64 - 1), st.sampled_from([2**63 - 1, 2**63, 2**64 - 1])
)


async def test_generated_log_requests_never_get_internal_or_unknown(
    stub: Stub, log_stub: LogStub
) -> None:
    digests = await seed(stub, "acme", 0, 3)
    seen: list[Message] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        kind=st.sampled_from(["inclusion", "consistency", "entries", "audit"]),
        a=_U64,
        b=_U64,
        digest=st.one_of(st.sampled_from(digests), st.text(max_size=80)),
    )
    def collect(kind: str, a: int, b: int, digest: str) -> None:
        if kind == "inclusion":
            seen.append(log_pb.GetInclusionProofRequest(digest=digest, tree_size=a))
        elif kind == "consistency":
            seen.append(log_pb.GetConsistencyProofRequest(first_size=a, second_size=b))
        elif kind == "entries":
            seen.append(log_pb.GetLogEntriesRequest(start=a, end=b))
        else:
            seen.append(log_pb.AuditLogRequest(start=a))

    collect()
    for request in seen:
        try:
            if isinstance(request, log_pb.AuditLogRequest):
                async for _ in log_stub.AuditLog(request, metadata=md("acme")):
                    pass
            else:
                name = {
                    log_pb.GetInclusionProofRequest: "GetInclusionProof",
                    log_pb.GetConsistencyProofRequest: "GetConsistencyProof",
                    log_pb.GetLogEntriesRequest: "GetLogEntries",
                }[type(request)]
                await getattr(log_stub, name)(request, metadata=md("acme"))
        except grpc.aio.AioRpcError as err:
            assert err.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
                request,
                err.details(),
            )
