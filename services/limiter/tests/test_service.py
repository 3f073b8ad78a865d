"""The limiter service through a real gRPC server, real Redis and (where events matter) Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.rpc import error_details_pb2

from mc.limiter.v1 import fairshare_service_pb2 as fs
from mc.limiter.v1 import fairshare_service_pb2_grpc as fs_grpc
from mc.limiter.v1 import limiter_events_pb2 as events_pb
from mc.limiter.v1 import limiter_pb2 as pb
from mc.limiter.v1 import limiter_service_pb2 as svc
from mc.limiter.v1 import limiter_service_pb2_grpc as svc_grpc
from mc_common.errors import status_details
from mc_common.events.consumer import EventConsumer
from mc_common.events.envelope import ReceivedEvent
from mc_common.server import RunningServer, start_server
from mc_common.testing.identity import TestTrustDomain
from mc_limiter.app import LimiterApp
from mc_limiter.settings import LimiterSettings

OPERATOR = (("x-mc-principal", "operator:ops"),)


def md(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("x-mc-tenant", tenant),)


def rule(rule_id: str = "exec-starts", **overrides: object) -> pb.Rule:
    base = pb.Rule(
        id=rule_id,
        scope=pb.RULE_SCOPE_KEY,
        tenant="*",
        key="executions:*",
        limits=[
            pb.Limit(
                name="per-minute",
                algorithm=pb.ALGORITHM_SLIDING_WINDOW,
                limit=5,
                window_ms=60_000,
            )
        ],
    )
    for name, value in overrides.items():
        setattr(base, name, value)
    return base


def bad_fields(err: grpc.aio.AioRpcError) -> list[str]:
    return [
        v.field
        for d in status_details(err)
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
    ]


async def start_limiter(settings: LimiterSettings) -> tuple[LimiterApp, RunningServer]:
    app = await LimiterApp.create(settings)
    return app, await start_server(settings, app.spec())


@pytest.fixture
def settings(redis_server_url: str, redis_prefix: str) -> LimiterSettings:
    return LimiterSettings(
        redis_urls=[redis_server_url],
        key_prefix=f"{redis_prefix}rl",
        fairshare_key_prefix=f"{redis_prefix}fs",
        fairshare_capacity=2,
    )


@pytest.fixture
async def server(settings: LimiterSettings, redis_client: object) -> AsyncIterator[RunningServer]:
    app, running = await start_limiter(settings)
    yield running
    await running.stop(0)
    await app.close()


@pytest.fixture
async def channel(
    server: RunningServer, mc_trust_domain: TestTrustDomain
) -> AsyncIterator[grpc.aio.Channel]:
    async with mc_trust_domain.channel(server.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> svc_grpc.LimiterServiceStub:
    return svc_grpc.LimiterServiceStub(channel)


async def test_rules_are_operator_data(stub: svc_grpc.LimiterServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PutRule(svc.PutRuleRequest(rule=rule()), metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    stored = (await stub.PutRule(svc.PutRuleRequest(rule=rule()), metadata=OPERATOR)).rule
    assert stored.revision == 1 and stored.updated_by == "operator:ops"
    got = (await stub.GetRule(svc.GetRuleRequest(rule_id="exec-starts"), metadata=OPERATOR)).rule
    assert got.limits[0].window_ms == 60_000 and got.key == "executions:*"
    listed = await stub.ListRules(svc.ListRulesRequest(), metadata=OPERATOR)
    assert [r.id for r in listed.rules] == ["exec-starts"] and not listed.next_page_token
    second = rule()
    second.id = "exec-starts-2"
    await stub.PutRule(svc.PutRuleRequest(rule=second), metadata=OPERATOR)
    first = await stub.ListRules(svc.ListRulesRequest(page_size=1), metadata=OPERATOR)
    assert [r.id for r in first.rules] == ["exec-starts"] and first.next_page_token
    rest = await stub.ListRules(
        svc.ListRulesRequest(page_size=1, page_token=first.next_page_token), metadata=OPERATOR
    )
    assert [r.id for r in rest.rules] == ["exec-starts-2"] and not rest.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a token of another tenant filter
        await stub.ListRules(
            svc.ListRulesRequest(tenant="acme", page_token=first.next_page_token),
            metadata=OPERATOR,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await stub.DeleteRule(svc.DeleteRuleRequest(rule_id="exec-starts-2"), metadata=OPERATOR)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetRule(svc.GetRuleRequest(rule_id="nope"), metadata=OPERATOR)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:  # stale revision: optimistic concurrency
        await stub.PutRule(svc.PutRuleRequest(rule=rule(), expected_revision=7), metadata=OPERATOR)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await stub.DeleteRule(svc.DeleteRuleRequest(rule_id="exec-starts"), metadata=OPERATOR)
    assert not (await stub.ListRules(svc.ListRulesRequest(), metadata=OPERATOR)).rules


async def test_invalid_rules_name_the_field(stub: svc_grpc.LimiterServiceStub) -> None:
    no_window = rule()
    no_window.limits[0].window_ms = 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PutRule(svc.PutRuleRequest(rule=no_window), metadata=OPERATOR)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == ["rule.limits[0].window_ms"]
    burst_on_window = rule()
    burst_on_window.limits[0].burst = 3  # burst is a token-bucket notion
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PutRule(svc.PutRuleRequest(rule=burst_on_window), metadata=OPERATOR)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == ["rule.limits[0]"]


async def test_check_consumes_and_denies_with_a_retry_hint(
    stub: svc_grpc.LimiterServiceStub,
) -> None:
    await stub.PutRule(svc.PutRuleRequest(rule=rule()), metadata=OPERATOR)
    check = svc.CheckRequest(tenant="acme", key="executions:start", cost=2)
    first = await stub.Check(check, metadata=md("acme"))
    assert first.allowed and first.remaining == 3 and first.decided_by == "exec-starts/per-minute"
    peek = await stub.Check(
        svc.CheckRequest(tenant="acme", key="executions:start", cost=0), metadata=md("acme")
    )
    assert peek.allowed and peek.remaining == 3, "cost 0 peeks without consuming"
    await stub.Check(check, metadata=md("acme"))
    denied = await stub.Check(check, metadata=md("acme"))
    assert not denied.allowed and denied.retry_after_ms > 0
    assert denied.limits[0].rule_id == "exec-starts" and not denied.limits[0].allowed
    other = await stub.Check(
        svc.CheckRequest(tenant="beta", key="executions:start", cost=2), metadata=md("beta")
    )
    assert other.allowed, "key scope counts per tenant"
    usage = await stub.GetUsage(
        svc.GetUsageRequest(tenant="acme", key="executions:start"), metadata=md("acme")
    )
    assert usage.limits[0].remaining == 1


async def test_bad_checks_get_clear_errors(stub: svc_grpc.LimiterServiceStub) -> None:
    await stub.PutRule(svc.PutRuleRequest(rule=rule()), metadata=OPERATOR)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Check(svc.CheckRequest(tenant="", key="executions:start"), metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(err.value) == ["tenant"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Check(svc.CheckRequest(tenant="acme", key="executions:start"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Check(
            svc.CheckRequest(tenant="beta", key="executions:start"), metadata=md("acme")
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:  # no rule matches this key
        await stub.Check(svc.CheckRequest(tenant="acme", key="other", cost=1), metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_check_batch(stub: svc_grpc.LimiterServiceStub) -> None:
    await stub.PutRule(svc.PutRuleRequest(rule=rule()), metadata=OPERATOR)
    batch = svc.CheckBatchRequest(
        checks=[svc.CheckRequest(tenant="acme", key="executions:start", cost=1)] * 7
    )
    reply = await stub.CheckBatch(batch, metadata=md("acme"))
    assert [r.allowed for r in reply.results] == [True] * 5 + [False] * 2
    mixed = svc.CheckBatchRequest(
        checks=[
            svc.CheckRequest(tenant="acme", key="executions:start"),
            svc.CheckRequest(tenant="beta", key="executions:start"),
        ]
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CheckBatch(mixed, metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    service = (("x-mc-tenant", "acme"), ("x-mc-principal", "service:gateway"))
    assert len((await stub.CheckBatch(mixed, metadata=service)).results) == 2


async def test_throttle_levels_scale_and_are_audited(
    settings: LimiterSettings,
    redis_client: object,
    kafka_bootstrap: str,
    topic_name: Callable[[str], str],
    kafka_consumer_timings: object,
    mc_trust_domain: TestTrustDomain,
) -> None:
    audit_topic, decisions_topic = topic_name("mc.limiter.audit"), topic_name("mc.limiter.dec")
    settings = settings.model_copy(
        update={
            "kafka_bootstrap": kafka_bootstrap,
            "audit_topic": audit_topic,
            "decisions_topic": decisions_topic,
        }
    )
    app, running = await start_limiter(settings)
    received: list[ReceivedEvent] = []

    async def collect(event: ReceivedEvent) -> None:
        received.append(event)

    consumer = EventConsumer(
        kafka_bootstrap,
        [audit_topic, decisions_topic],
        group_id=topic_name("test"),
        handler=collect,
        timings=kafka_consumer_timings,  # type: ignore[arg-type]
    )
    task = asyncio.create_task(consumer.run())
    try:
        async with mc_trust_domain.channel(running.address) as channel:
            stub = svc_grpc.LimiterServiceStub(channel)
            ten_per_min = rule(scope=pb.RULE_SCOPE_TENANT)
            ten_per_min.limits[0].limit = 10
            await stub.PutRule(svc.PutRuleRequest(rule=ten_per_min), metadata=OPERATOR)
            reply = await stub.SetThrottleLevel(
                svc.SetThrottleLevelRequest(
                    tenant="acme", level=pb.THROTTLE_LEVEL_MODERATE, reason="INC-42"
                ),
                metadata=OPERATOR,
            )
            assert reply.previous == pb.THROTTLE_LEVEL_NONE
            level = await stub.GetThrottleLevel(
                svc.GetThrottleLevelRequest(tenant="acme"), metadata=OPERATOR
            )
            assert level.level == pb.THROTTLE_LEVEL_MODERATE
            check = svc.CheckRequest(tenant="acme", key="executions:start", cost=1)
            results = [(await stub.Check(check, metadata=md("acme"))).allowed for _ in range(7)]
            assert results == [True] * 5 + [False] * 2, "moderate halves 10/min to 5/min"
        await app.limiter.flush_denies()

        async def settled() -> bool:
            types = {e.event_type for e in received}
            return {"mc.limiter.audit.v1", "mc.limiter.denials.v1"} <= types

        for _ in range(200):
            if await settled():
                break
            await asyncio.sleep(0.1)
        audits = [e for e in received if e.event_type == "mc.limiter.audit.v1"]
        throttles = [
            e.unpack(events_pb.LimiterAuditEvent)
            for e in audits
            if e.unpack(events_pb.LimiterAuditEvent).action == "limiter.throttle.set"
        ]
        assert len(throttles) == 1
        assert throttles[0].after.string_value == "moderate"
        assert throttles[0].reason == "INC-42" and throttles[0].actor == "operator:ops"
        denials = [
            e.unpack(events_pb.DenialsEvent)
            for e in received
            if e.event_type == "mc.limiter.denials.v1"
        ]
        assert sum(d.count for d in denials if d.mode == "enforce") == 2
        assert {d.tenant for d in denials} == {"acme"}
    finally:
        await consumer.stop()
        await task
        await running.stop(0)
        await app.close()


async def test_release_slot_withdraws_a_queued_request(channel: grpc.aio.Channel) -> None:
    """A queued request used to be impossible to withdraw (ReleaseSlot refused it and nothing
    else existed), so it was later granted to nobody and held a slot for a whole lease."""
    slots = fs_grpc.FairShareServiceStub(channel)
    for rid in ("w1", "w2"):
        await slots.AcquireSlot(fs.AcquireSlotRequest(request_id=rid), metadata=md("acme"))
    queued = await slots.AcquireSlot(fs.AcquireSlotRequest(request_id="w3"), metadata=md("beta"))
    assert queued.slot.state == fs.SLOT_STATE_QUEUED
    withdrawn = await slots.ReleaseSlot(fs.ReleaseSlotRequest(request_id="w3"), metadata=md("beta"))
    assert withdrawn.withdrawn and not withdrawn.released
    released = await slots.ReleaseSlot(fs.ReleaseSlotRequest(request_id="w1"), metadata=md("acme"))
    assert released.released and released.dispatched == 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await slots.GetSlot(fs.GetSlotRequest(request_id="w3"), metadata=md("beta"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    stats = await slots.GetFairShareStats(fs.GetFairShareStatsRequest(), metadata=OPERATOR)
    assert (stats.running, stats.queued) == (1, 0)


async def test_fair_share_slots(channel: grpc.aio.Channel) -> None:
    slots = fs_grpc.FairShareServiceStub(channel)
    first = await slots.AcquireSlot(fs.AcquireSlotRequest(request_id="r1"), metadata=md("acme"))
    second = await slots.AcquireSlot(fs.AcquireSlotRequest(request_id="r2"), metadata=md("acme"))
    third = await slots.AcquireSlot(fs.AcquireSlotRequest(request_id="r3"), metadata=md("beta"))
    assert [first.slot.state, second.slot.state] == [fs.SLOT_STATE_GRANTED] * 2
    assert third.slot.state == fs.SLOT_STATE_QUEUED, "capacity 2 is taken"
    released = await slots.ReleaseSlot(fs.ReleaseSlotRequest(request_id="r1"), metadata=md("acme"))
    assert released.released and released.dispatched == 1
    now = await slots.GetSlot(fs.GetSlotRequest(request_id="r3"), metadata=md("beta"))
    assert now.slot.state == fs.SLOT_STATE_GRANTED
    with pytest.raises(grpc.aio.AioRpcError) as err:  # another tenant's request is not found
        await slots.GetSlot(fs.GetSlotRequest(request_id="r3"), metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    stats = await slots.GetFairShareStats(fs.GetFairShareStatsRequest(), metadata=OPERATOR)
    assert (stats.capacity, stats.running, stats.queued) == (2, 2, 0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await slots.SetTenantWeight(
            fs.SetTenantWeightRequest(tenant="acme", weight=0), metadata=OPERATOR
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
