"""Hostile and careless input gets a typed answer and changes nothing (issue 7 section 2).

Each case here produced INTERNAL before the fix: NUL characters reached Postgres `text`,
timestamps past year 9999 reached `datetime`, and forged page tokens reached the queries.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from pql_support import OPERATOR, SHA, content, md, record

from mc.pql.v1 import provenance_pb2 as pb
from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_common.receipts import ReceiptBody
from mc_common.signing import IN_TOTO_PAYLOAD_TYPE, PemSigner, sign_envelope
from mc_common.testing.snapshots import postgres_fingerprint
from mc_pql.app import PqlApp
from mc_pql.client_statement import client_statement_bytes, sign_client_statement
from mc_pql.settings import PqlSettings

Stub = svc_grpc.ProvenanceServiceStub

FAR = 253_402_300_800  # 10000-01-01T00:00:00Z


def execution(**overrides: Any) -> pb.Execution:
    out = pb.Execution(
        execution_id="exec-1",
        package=pb.PackageRef(name="acme/etl", version="1.0", digest=SHA),
        region="us-east-1",
        status="SUCCEEDED",
        labels={"team": "data"},
    )
    for name, value in overrides.items():
        if name == "labels":
            out.labels.clear()
            out.labels.update(value)
        else:
            setattr(out, name, value)
    return out


def decision(**overrides: Any) -> pb.PolicyDecision:
    out = pb.PolicyDecision(decision_id="dec-1", policy="mc.limits@1", rule="r", allow=True)
    out.decided_at.seconds = 1_780_000_000
    for name, value in overrides.items():
        setattr(out, name, value)
    return out


def far_execution() -> pb.Execution:
    out = execution()
    out.started_at.seconds = FAR
    return out


def far_decision() -> pb.PolicyDecision:
    out = decision()
    out.decided_at.seconds = FAR
    return out


def negative_nanos_decision() -> pb.PolicyDecision:
    out = decision()
    out.decided_at.nanos = -1
    return out


def receipt_with(**fields: Any) -> svc.RecordReceiptRequest:
    out = content()
    for name, value in fields.items():
        if isinstance(value, list):
            del getattr(out, name)[:]
            getattr(out, name).extend(value)
        else:
            setattr(out, name, value)
    return svc.RecordReceiptRequest(content=out)


def far_receipt() -> svc.RecordReceiptRequest:
    out = record("exec-far")
    out.content.steps[0].finished_at.seconds = FAR
    out.content.finished_at.seconds = FAR
    return out


Call = tuple[str, Callable[[], Message]]

CASES: dict[str, Call] = {
    "get-execution-nul": (
        "GetExecution",
        lambda: svc.GetExecutionRequest(execution_id="a\x00b"),
    ),
    "execution-label-key-nul": (
        "RecordExecution",
        lambda: svc.RecordExecutionRequest(execution=execution(labels={"k\x00": "v"})),
    ),
    "execution-label-value-nul": (
        "RecordExecution",
        lambda: svc.RecordExecutionRequest(execution=execution(labels={"k": "v\x00"})),
    ),
    "execution-region-nul": (
        "RecordExecution",
        lambda: svc.RecordExecutionRequest(execution=execution(region="us\x00")),
    ),
    "execution-status-nul": (
        "RecordExecution",
        lambda: svc.RecordExecutionRequest(execution=execution(status="OK\x00")),
    ),
    "execution-year-10000": (
        "RecordExecution",
        lambda: svc.RecordExecutionRequest(execution=far_execution()),
    ),
    "list-receipts-filter-nul": (
        "ListReceipts",
        lambda: svc.ListReceiptsRequest(execution_id="e\x00"),
    ),
    "list-decisions-filter-nul": (
        "ListPolicyDecisions",
        lambda: svc.ListPolicyDecisionsRequest(execution_id="e\x00"),
    ),
    "decision-id-nul": (
        "RecordPolicyDecision",
        lambda: svc.RecordPolicyDecisionRequest(decision=decision(decision_id="d\x00")),
    ),
    "decision-reason-nul": (
        "RecordPolicyDecision",
        lambda: svc.RecordPolicyDecisionRequest(decision=decision(reason="\x00")),
    ),
    "decision-year-10000": (
        "RecordPolicyDecision",
        lambda: svc.RecordPolicyDecisionRequest(decision=far_decision()),
    ),
    "decision-negative-nanos": (
        "RecordPolicyDecision",
        lambda: svc.RecordPolicyDecisionRequest(decision=negative_nanos_decision()),
    ),
    "get-decision-nul": (
        "GetPolicyDecision",
        lambda: svc.GetPolicyDecisionRequest(decision_id="d\x00"),
    ),
    "receipt-year-10000": ("RecordReceipt", far_receipt),
    "receipt-region-nul": ("RecordReceipt", lambda: receipt_with(region="us\x00")),
    "receipt-decision-reason-nul": (
        "RecordReceipt",
        lambda: receipt_with(
            policy_decisions=[pb.DecisionRef(decision_id="d", policy="p", rule="r", reason="\x00")]
        ),
    ),
}


async def fingerprint(settings: PqlSettings) -> dict[str, str]:
    return await asyncio.to_thread(postgres_fingerprint, settings.postgres_dsn, ["pql"])


async def call(stub: Stub, method: str, request: Message, tenant: str = "acme") -> Any:
    return await getattr(stub, method)(request, metadata=md(tenant))


@pytest.mark.parametrize("case", sorted(CASES))
async def test_hostile_fields_are_invalid_argument_and_change_nothing(
    stub: Stub, pql_settings: PqlSettings, case: str
) -> None:
    await stub.RecordReceipt(record("seed"), metadata=md("acme"))  # something to protect
    method, build = CASES[case]
    before = await asyncio.to_thread(postgres_fingerprint, pql_settings.postgres_dsn, ["pql"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(stub, method, build())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    after = await asyncio.to_thread(postgres_fingerprint, pql_settings.postgres_dsn, ["pql"])
    assert after == before


def legacy_token(obj: object) -> str:
    """A token in the old, unauthenticated format: base64 of JSON a client can write."""
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


FORGED = [
    legacy_token({"t": "acme", "k": ["not-a-number"]}),
    legacy_token({"t": "acme", "k": [2**70]}),
    legacy_token({"t": "acme", "k": ["2026-01-01T00:00:00+00:00"]}),
    legacy_token({"t": "acme", "k": [1]}),
    legacy_token({"t": "acme", "k": []}),
    legacy_token({"t": "acme", "k": [-5]}),
    legacy_token({"t": "acme", "k": ["x\x00", "y"]}),
    "!!!not base64!!!",
    "AQ",
    "",  # placeholder replaced below: a real token with one character changed
]


async def _tokens(stub: Stub) -> dict[str, str]:
    """One genuine next_page_token of each listing, for tenant acme."""
    for n in range(3):
        await stub.RecordReceipt(record(f"e{n}", n), metadata=md("acme"))
        await stub.RecordExecution(
            svc.RecordExecutionRequest(execution=execution(execution_id=f"e{n}")),
            metadata=md("acme"),
        )
        await stub.RecordPolicyDecision(
            svc.RecordPolicyDecisionRequest(decision=decision(decision_id=f"d{n}")),
            metadata=md("acme"),
        )
    receipts = await stub.ListReceipts(svc.ListReceiptsRequest(page_size=1), metadata=md("acme"))
    executions = await stub.ListExecutions(
        svc.ListExecutionsRequest(page_size=1), metadata=md("acme")
    )
    decisions = await stub.ListPolicyDecisions(
        svc.ListPolicyDecisionsRequest(page_size=1), metadata=md("acme")
    )
    return {
        "ListReceipts": receipts.next_page_token,
        "ListExecutions": executions.next_page_token,
        "ListPolicyDecisions": decisions.next_page_token,
    }


LISTS: dict[str, type[Message]] = {
    "ListReceipts": svc.ListReceiptsRequest,
    "ListExecutions": svc.ListExecutionsRequest,
    "ListPolicyDecisions": svc.ListPolicyDecisionsRequest,
}


async def expect_invalid_token(
    stub: Stub, method: str, tenant: str = "acme", **fields: Any
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(stub, method, LISTS[method](**fields), tenant)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()


async def test_forged_and_foreign_page_tokens_are_invalid_argument(stub: Stub) -> None:
    genuine = await _tokens(stub)
    for method, token in genuine.items():
        assert token
        page = await call(stub, method, LISTS[method](page_size=1, page_token=token))
        assert page is not None  # the genuine token works
        tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
        for forged in [*FORGED[:-1], tampered]:
            await expect_invalid_token(stub, method, page_token=forged)
        # Another tenant's token.
        await expect_invalid_token(stub, method, tenant="globex", page_token=token)
        # Another listing's token.
        for other, other_token in genuine.items():
            if other != method:
                await expect_invalid_token(stub, method, page_token=other_token)
    # The same listing with another filter.
    await expect_invalid_token(
        stub, "ListReceipts", page_token=genuine["ListReceipts"], execution_id="e1"
    )
    await expect_invalid_token(
        stub, "ListPolicyDecisions", page_token=genuine["ListPolicyDecisions"], execution_id="x"
    )


async def test_page_tokens_survive_key_rotation(pql_settings: PqlSettings) -> None:
    from mc_common.pagetokens import PageTokens

    old = PqlSettings(**{**pql_settings.model_dump(), "page_token_keys": ["k" * 32]})
    rotated = PqlSettings(**{**pql_settings.model_dump(), "page_token_keys": ["n" * 32, "k" * 32]})
    token = old.page_tokens().issue([3], tenant="acme", listing="l")
    assert rotated.page_tokens().open(token, tenant="acme", listing="l") == [3]
    dropped: PageTokens = PqlSettings(
        **{**pql_settings.model_dump(), "page_token_keys": ["n" * 32]}
    ).page_tokens()
    with pytest.raises(Exception, match="page_token"):
        dropped.open(token, tenant="acme", listing="l")


def signed_body(tenant: str = "acme", **changes: Any) -> ReceiptBody:
    data: dict[str, Any] = {
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
    data.update(changes)
    return ReceiptBody.model_validate(data)


@pytest.fixture
async def client_key(stub: Stub) -> PemSigner:
    key = PemSigner.generate()
    await stub.RegisterSigningKey(
        svc.RegisterSigningKeyRequest(tenant="acme", public_key_pem=key.public_key_pem().decode()),
        metadata=OPERATOR,
    )
    return key


SIGNED_CASES = {
    "execution-id-6000-chars": {"execution_id": "x" * 6000},
    "execution-id-nul": {"execution_id": "a\x00b"},
    "execution-id-pattern": {"execution_id": "-starts-with-dash"},
    "region-too-long": {"region": "r" * 65},
    "decision-reason-nul": {
        "policy_decisions": [
            {"decision_id": "d", "policy": "p", "rule": "r", "allow": True, "reason": "\x00"}
        ]
    },
}


@pytest.mark.parametrize("case", sorted(SIGNED_CASES))
async def test_caller_signed_content_obeys_the_direct_content_rules(
    stub: Stub, client_key: PemSigner, pql_settings: PqlSettings, case: str
) -> None:
    envelope = sign_client_statement(signed_body(**SIGNED_CASES[case]), client_key)
    signed = svc.RecordReceiptRequest(signed_envelope=envelope.to_json().encode())
    before = await fingerprint(pql_settings)
    for method, request in (
        ("RecordReceipt", signed),
        ("RecordReceipts", svc.RecordReceiptsRequest(receipts=[record("ok"), signed])),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(stub, method, request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert await fingerprint(pql_settings) == before


async def test_dsse_payload_type_other_than_in_toto_is_refused(
    stub: Stub, client_key: PemSigner, pql_settings: PqlSettings
) -> None:
    payload = client_statement_bytes(signed_body())
    envelope = sign_envelope(payload, "text/plain", client_key)
    before = await fingerprint(pql_settings)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipt(
            svc.RecordReceiptRequest(signed_envelope=envelope.to_json().encode()),
            metadata=md("acme"),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "payloadType" in err.value.details()
    assert await fingerprint(pql_settings) == before
    good = sign_envelope(payload, IN_TOTO_PAYLOAD_TYPE, client_key)
    stored = await stub.RecordReceipt(
        svc.RecordReceiptRequest(signed_envelope=good.to_json().encode()), metadata=md("acme")
    )
    assert stored.receipt.verification.valid


def big_content(execution_id: str, outputs: int) -> pb.ReceiptContent:
    """Content of about 570 bytes per step output (each also becomes a subject when signed)."""
    out = content(execution_id)
    step = out.steps[0]
    del out.steps[:]
    for s in range(outputs // 60 + 1):
        new = out.steps.add()
        new.CopyFrom(step)
        new.name = f"step-{s}"
        del new.outputs[:]
        for o in range(min(60, outputs - s * 60)):
            new.outputs.add(name=f"{o:03d}-" + "o" * 496, sha256=f"{s * 60 + o:064x}")
    return out


async def count_rows(settings: PqlSettings) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn) as conn:
        cur = await conn.execute("SELECT count(*) FROM pql.receipts")
        row = await cur.fetchone()
        return 0 if row is None else int(row[0])


async def test_a_receipt_whose_reply_cannot_be_sent_is_refused_not_stored(
    stub: Stub, pql_settings: PqlSettings
) -> None:
    """1.8 MB of content within every field bound: before, it was stored, its own reply was
    RESOURCE_EXHAUSTED, and ListReceipts failed for that tenant from then on."""
    huge = svc.RecordReceiptRequest(content=big_content("huge", 3200))
    assert 1_700_000 < huge.ByteSize() < 4_000_000
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipt(huge, metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert await count_rows(pql_settings) == 0
    listed = await stub.ListReceipts(svc.ListReceiptsRequest(), metadata=md("acme"))
    assert list(listed.receipts) == []


async def test_a_batch_whose_reply_cannot_be_sent_is_refused_not_stored(
    stub: Stub, pql_settings: PqlSettings
) -> None:
    batch = svc.RecordReceiptsRequest(
        receipts=[svc.RecordReceiptRequest(content=big_content(f"b{n}", 300)) for n in range(12)]
    )
    assert batch.ByteSize() < 4_000_000
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipts(batch, metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert await count_rows(pql_settings) == 0


async def test_list_pages_by_bytes_and_every_stored_receipt_is_retrievable(stub: Stub) -> None:
    stored = []
    for n in range(8):  # each about 0.7 MB to serve: a page of 50 would be about 5.6 MB
        reply = await stub.RecordReceipt(
            svc.RecordReceiptRequest(content=big_content(f"p{n}", 300)), metadata=md("acme")
        )
        stored.append(reply.receipt.digest)
        got = await stub.GetReceipt(
            svc.GetReceiptRequest(digest=reply.receipt.digest), metadata=md("acme")
        )
        assert got.receipt.verification.valid
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await stub.ListReceipts(
            svc.ListReceiptsRequest(page_size=50, page_token=token), metadata=md("acme")
        )
        assert page.ByteSize() < 4 * 1024 * 1024
        seen += [r.digest for r in page.receipts]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == stored and pages > 1


async def test_label_bounds_hold_so_execution_pages_fit(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordExecution(
            svc.RecordExecutionRequest(execution=execution(labels={"k": "v" * 100_000})),
            metadata=md("acme"),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_retried_write_returns_the_original_receipt(
    stub: Stub, pql_settings: PqlSettings
) -> None:
    request = record("idem", 1)
    request.idempotency_key = "order-42"
    first = (await stub.RecordReceipt(request, metadata=md("acme"))).receipt
    again = (await stub.RecordReceipt(request, metadata=md("acme"))).receipt
    assert again.digest == first.digest and again.sequence == first.sequence
    assert again.verification.valid and again.content == first.content
    assert await count_rows(pql_settings) == 1
    # Concurrent retries (one round of the writer, or racing replicas) still record it once.
    racing = record("race", 2)
    racing.idempotency_key = "order-43"
    replies = await asyncio.gather(
        *(stub.RecordReceipt(racing, metadata=md("acme")) for _ in range(6))
    )
    assert len({r.receipt.digest for r in replies}) == 1
    assert await count_rows(pql_settings) == 2
    # The same key from another tenant is another request.
    other = (await stub.RecordReceipt(request, metadata=md("globex"))).receipt
    assert other.tenant == "globex" and other.sequence == 1


async def test_a_reused_key_with_another_request_is_already_exists(
    stub: Stub, pql_settings: PqlSettings
) -> None:
    request = record("idem", 1)
    request.idempotency_key = "k-1"
    await stub.RecordReceipt(request, metadata=md("acme"))
    changed = record("idem", 2)
    changed.idempotency_key = "k-1"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipt(changed, metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await count_rows(pql_settings) == 1


async def test_a_retried_batch_returns_the_original_receipts(
    stub: Stub, pql_settings: PqlSettings
) -> None:
    batch = svc.RecordReceiptsRequest(
        receipts=[record(f"b{n}", n) for n in range(3)], idempotency_key="batch-7"
    )
    first = await stub.RecordReceipts(batch, metadata=md("acme"))
    await stub.RecordReceipt(record("between", 9), metadata=md("acme"))
    again = await stub.RecordReceipts(batch, metadata=md("acme"))
    assert [r.digest for r in again.receipts] == [r.digest for r in first.receipts]
    assert [r.sequence for r in again.receipts] == [1, 2, 3]
    assert await count_rows(pql_settings) == 4
    keyed_item = svc.RecordReceiptsRequest(receipts=[record("x", 1)])
    keyed_item.receipts[0].idempotency_key = "inner"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipts(keyed_item, metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_write_committed_before_a_lost_reply_is_not_duplicated(
    pql_app: PqlApp, pql_settings: PqlSettings
) -> None:
    """The crash between commit and reply: the caller never saw the receipt and retries."""
    from mc_pql import convert

    request = record("lost", 1)
    request.idempotency_key = "lost-reply"
    submission = convert.content_to_submission("acme", request.content, "content")
    key = convert.request_key(request)
    task = asyncio.ensure_future(pql_app.provenance.record_receipts("acme", [submission], key))
    committed = await task  # committed; pretend the reply was lost on the way
    retried = await pql_app.provenance.record_receipts(
        "acme", [convert.content_to_submission("acme", request.content, "content")], key
    )
    assert [s.row.digest for s in retried] == [s.row.digest for s in committed]
    assert await count_rows(pql_settings) == 1
