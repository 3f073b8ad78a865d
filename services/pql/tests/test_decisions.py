"""Policy decisions arrive by RPC and as Kafka events; redelivery never duplicates them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from pql_support import md

from mc.policy.v1 import decision_events_pb2 as events_pb
from mc.pql.v1 import provenance_pb2 as pb
from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_common.events.publisher import EventPublisher
from mc_pql.app import PqlApp
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
