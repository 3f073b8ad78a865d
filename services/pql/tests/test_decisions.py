"""Policy decisions arrive by RPC and as Kafka events; redelivery never duplicates them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from pql_support import md

from mc.policy.v1 import decision_events_pb2 as events_pb
from mc.pql.v1 import provenance_pb2 as pb
from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_common.errors import status_details
from mc_common.events import HEADER_DLQ_REASON, dead_letter_topic, decode_record
from mc_common.events.publisher import EventPublisher
from mc_pql.app import PqlApp, prepare_database
from mc_pql.decisions import DECISION_EVENT_TYPE
from mc_pql.settings import PqlSettings

Stub = svc_grpc.ProvenanceServiceStub
DECIDED = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def decided_at() -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(DECIDED)
    return ts


async def decision_rows(app: PqlApp, tenant: str) -> list[tuple[str, bool]]:
    async with app.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT decision_id, allow FROM policy_decisions WHERE tenant = %s ORDER BY 1",
            (tenant,),
        )
        return [(r[0], r[1]) for r in await cur.fetchall()]


async def test_rpc_recording_is_idempotent_and_tenant_scoped(stub: Stub) -> None:
    decision = pb.PolicyDecision(
        decision_id="dec-1",
        policy="mc.limits@1",
        rule="quota",
        allow=False,
        reason="over quota",
        decided_at=decided_at(),
    )
    first = await stub.RecordPolicyDecision(
        svc.RecordPolicyDecisionRequest(decision=decision), metadata=md("acme")
    )
    again = await stub.RecordPolicyDecision(
        svc.RecordPolicyDecisionRequest(decision=decision), metadata=md("acme")
    )
    assert first.created and not again.created
    assert again.decision.reason == "over quota" and again.decision.tenant == "acme"
    listed = await stub.ListPolicyDecisions(svc.ListPolicyDecisionsRequest(), metadata=md("acme"))
    assert [d.decision_id for d in listed.decisions] == ["dec-1"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetPolicyDecision(
            svc.GetPolicyDecisionRequest(decision_id="dec-1"), metadata=md("other")
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_decision_without_time_is_rejected(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordPolicyDecision(
            svc.RecordPolicyDecisionRequest(
                decision=pb.PolicyDecision(decision_id="d", policy="p")
            ),
            metadata=md("acme"),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
async def consuming_app(
    pg_dsn: str, service_key: Path, kafka_bootstrap: str, topic_name: Callable[[str], str]
) -> AsyncIterator[tuple[PqlApp, str]]:
    topic = topic_name("mc.policy.decisions")
    settings = PqlSettings(
        postgres_dsn=pg_dsn,
        signing_key_path=service_key,
        kafka_bootstrap=kafka_bootstrap,
        decisions_topic=topic,
        consumer_group=topic_name("mc-pql"),
    )
    app = await PqlApp.create(settings)
    yield app, topic
    await app.close()


async def wait_for(predicate: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def test_redelivered_events_create_no_duplicates(
    consuming_app: tuple[PqlApp, str], kafka_bootstrap: str
) -> None:
    app, topic = consuming_app
    event = events_pb.PolicyDecisionEvent(
        decision_id="dec-7",
        tenant="acme",
        policy="mc.limits@1",
        rule="quota",
        allow=False,
        reason="over quota",
        decided_at=decided_at(),
    )
    async with EventPublisher(kafka_bootstrap, source="test") as publisher:
        # The same event delivered three times, and a retry that minted a new event id.
        for _ in range(3):
            await publisher.publish(topic, "acme", DECISION_EVENT_TYPE, event, event_id="evt-7")
        await publisher.publish(topic, "acme", DECISION_EVENT_TYPE, event, event_id="evt-7-retry")
        # An event for another tenant, and one that can never be stored (wrong type).
        other = events_pb.PolicyDecisionEvent()
        other.CopyFrom(event)
        other.tenant = "beta"
        await publisher.publish(topic, "beta", DECISION_EVENT_TYPE, other, event_id="evt-8")
        await publisher.publish(topic, "acme", "mc.unknown.v1", event, event_id="evt-9")

    assert app.consumer is not None

    async def settled() -> bool:
        return app.consumer is not None and (
            app.consumer.processed + app.consumer.dead_lettered >= 6
        )

    await wait_for(settled)
    assert await decision_rows(app, "acme") == [("dec-7", False)]
    assert await decision_rows(app, "beta") == [("dec-7", False)]
    assert app.consumer.dead_lettered == 1


async def test_same_decision_id_with_other_content_is_already_exists(stub: Stub) -> None:
    decision = pb.PolicyDecision(
        decision_id="dec-9", policy="mc.limits@1", rule="q", allow=True, decided_at=decided_at()
    )
    await stub.RecordPolicyDecision(
        svc.RecordPolicyDecisionRequest(decision=decision), metadata=md("acme")
    )
    changed = pb.PolicyDecision()
    changed.CopyFrom(decision)
    changed.allow = False
    changed.reason = "over quota"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordPolicyDecision(
            svc.RecordPolicyDecisionRequest(decision=changed), metadata=md("acme")
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "allow" in err.value.details() and "reason" in err.value.details()
    [info] = [d for d in status_details(err.value) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert info.reason == "ERROR_REASON_DECISION_CONFLICT"
    assert info.metadata["differing_fields"] == "allow,reason"
    got = await stub.GetPolicyDecision(
        svc.GetPolicyDecisionRequest(decision_id="dec-9"), metadata=md("acme")
    )
    assert got.decision.allow  # the stored content is unchanged


def event_of(decision_id: str, **changes: object) -> events_pb.PolicyDecisionEvent:
    out = events_pb.PolicyDecisionEvent(
        decision_id=decision_id,
        tenant="acme",
        policy="mc.limits@1",
        rule="quota",
        allow=True,
        decided_at=decided_at(),
    )
    for name, value in changes.items():
        if name == "decided_seconds":
            out.decided_at.seconds = value  # type: ignore[assignment]
        else:
            setattr(out, name, value)
    return out


async def test_poison_and_conflicting_events_are_dead_lettered_and_never_stall(
    consuming_app: tuple[PqlApp, str], kafka_bootstrap: str
) -> None:
    app, topic = consuming_app
    async with EventPublisher(kafka_bootstrap, source="test") as publisher:
        sends = [
            ("nul", event_of("dec-nul", reason="\x00")),  # Postgres refuses NUL: DATA
            ("far", event_of("dec-far", decided_seconds=253_402_300_800)),  # year 10000: DATA
            ("long", event_of("d" * 200)),  # longer than the proto's 128: DATA
            ("ok", event_of("dec-ok")),
            ("ok", event_of("dec-ok", reason="rewritten")),  # same id, other body: CONFLICT
            ("ok-2", event_of("dec-ok", allow=False)),  # same decision, other content: CONFLICT
            ("last", event_of("dec-last")),
        ]
        for event_id, event in sends:
            await publisher.publish(topic, "acme", DECISION_EVENT_TYPE, event, event_id=event_id)
    assert app.consumer is not None

    async def settled() -> bool:
        return app.consumer is not None and (
            app.consumer.processed + app.consumer.dead_lettered >= len(sends)
        )

    await wait_for(settled)
    assert await decision_rows(app, "acme") == [("dec-last", True), ("dec-ok", True)]
    dead = await read_dead_letters(kafka_bootstrap, dead_letter_topic(topic), 5)
    reasons = {
        decode_record(r.headers, r.key, r.value).id + "@" + str(r.offset): dict(r.headers)[
            HEADER_DLQ_REASON
        ]
        for r in dead
    }
    assert sorted(reasons.values()) == [b"CONFLICT", b"CONFLICT", b"DATA", b"DATA", b"DATA"]


async def read_dead_letters(bootstrap: str, topic: str, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(20):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def test_processed_events_table_comes_from_migrations_and_is_purged(
    pg_dsn: str, service_key: Path, kafka_bootstrap: str, topic_name: Callable[[str], str]
) -> None:
    settings = PqlSettings(
        postgres_dsn=pg_dsn,
        signing_key_path=service_key,
        kafka_bootstrap=kafka_bootstrap,
        decisions_topic=topic_name("mc.policy.decisions"),
        consumer_group=topic_name("mc-pql"),
        processed_events_retention_s=0.001,
        processed_events_purge_interval_s=0.05,
    )
    await prepare_database(settings)  # migrations only
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'pql' AND table_name = 'processed_events' ORDER BY 1"
        )
        columns = [r[0] for r in await cur.fetchall()]
    assert columns == ["body_sha256", "consumer", "event_id", "processed_at"]

    app = await PqlApp.create(settings)
    try:
        async with EventPublisher(kafka_bootstrap, source="test") as publisher:
            await publisher.publish(
                settings.decisions_topic, "acme", DECISION_EVENT_TYPE, event_of("p"), event_id="p"
            )

        async def recorded_then_purged() -> bool:
            rows = await decision_rows(app, "acme")
            async with app.pool.connection() as conn:
                cur = await conn.execute("SELECT count(*) FROM processed_events")
                row = await cur.fetchone()
            return rows == [("p", True)] and row is not None and row[0] == 0

        await wait_for(recorded_then_purged)
    finally:
        await app.close()


async def test_decisions_from_a_standard_cloudevents_producer_are_recorded(
    consuming_app: tuple[PqlApp, str], kafka_bootstrap: str
) -> None:
    """A PDP that is not MC's, writing with the CloudEvents SDK in structured JSON mode, is
    understood (it used to be dead-lettered for not being an MC envelope)."""
    from aiokafka import AIOKafkaProducer
    from cloudevents.core.bindings import kafka as sdk_kafka
    from cloudevents.core.v1.event import CloudEvent as SdkEvent
    from google.protobuf import json_format

    app, topic = consuming_app
    message = sdk_kafka.to_structured_event(
        SdkEvent(
            {
                "type": DECISION_EVENT_TYPE,
                "source": "urn:example:opa-sidecar",
                "id": "ext-1",
                "mctenant": "acme",
                "datacontenttype": "application/json",
            },
            json_format.MessageToDict(event_of("dec-ext")),
        )
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            topic, message.value, key=b"acme", headers=list(message.headers.items())
        )
    finally:
        await producer.stop()

    async def recorded() -> bool:
        return ("dec-ext", True) in await decision_rows(app, "acme")

    await wait_for(recorded)
    assert app.consumer is not None and app.consumer.dead_lettered == 0
