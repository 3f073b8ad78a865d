"""Tests of `mc_common.events` against a real Tansu broker and Postgres.

Each test uses its own topics and consumer groups, so the session's one broker is shared safely.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from psycopg import AsyncConnection

from mc.common.v1.event_pb2 import EventEnvelope
from mc.policy.v1.decision_events_pb2 import PolicyDecisionEvent
from mc_common.db import Pool, create_pool
from mc_common.events import (
    HEADER_DLQ_ATTEMPTS,
    HEADER_DLQ_ERROR,
    HEADER_DLQ_ERROR_TYPE,
    HEADER_DLQ_OFFSET,
    HEADER_DLQ_REASON,
    HEADER_DLQ_TOPIC,
    DeadLetterEvent,
    EventConsumer,
    EventPublisher,
    GroupTimings,
    MalformedEventError,
    OutgoingEvent,
    ProcessedEvents,
    ReceivedEvent,
    build_envelope,
    dead_letter_topic,
    decode_envelope,
    decode_record,
    envelope_headers,
    idempotent,
)

EVENT_TYPE = "mc.policy.decision.v1"
WAIT = 20.0  # seconds; generous for a loaded 2-core machine, never reached when green


def decision(decision_id: str, tenant: str = "tenant-a", allow: bool = True) -> PolicyDecisionEvent:
    return PolicyDecisionEvent(
        decision_id=decision_id, tenant=tenant, policy="mc.limits", rule="r1", allow=allow
    )


class Collector:
    """A handler that records events and lets a test wait until it has seen `n` of them."""

    def __init__(self) -> None:
        self.events: list[ReceivedEvent] = []
        self._changed = asyncio.Condition()

    async def __call__(self, event: ReceivedEvent) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def wait_for(self, count: int) -> list[ReceivedEvent]:
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(lambda: len(self.events) >= count)
        return self.events


@asynccontextmanager
async def running(consumer: EventConsumer) -> AsyncIterator[EventConsumer]:
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        await consumer.stop()
        await task


@asynccontextmanager
async def publisher(bootstrap: str) -> AsyncIterator[EventPublisher]:
    async with EventPublisher(bootstrap, source="mc-test/pod-1") as pub:
        yield pub


async def read_topic(bootstrap: str, topic: str, count: int) -> list[ConsumerRecord[Any, Any]]:
    """Read `count` records from `topic` without a consumer group (no join, no commit)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    records: list[ConsumerRecord[Any, Any]] = []
    try:
        async with asyncio.timeout(WAIT):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def committed_offsets(bootstrap: str, group_id: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of `topic` (partitions without one omitted).

    Read through a consumer that joins nothing: Tansu 0.6's answer to the admin client's
    OffsetFetch does not decode in aiokafka.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads the cluster metadata
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        offsets = {p: await consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        await consumer.stop()
    return {p: offset for p, offset in offsets.items() if offset is not None}


def test_envelope_round_trip_and_headers() -> None:
    when = datetime(2025, 1, 31, 12, 0, 5, 250_000, tzinfo=UTC)
    envelope = build_envelope(
        tenant="tenant-a",
        event_type=EVENT_TYPE,
        message=decision("d-1"),
        source="mc-edge-policy/pod-1",
        schema_version=2,
        event_id="evt-1",
        time=when,
    )

    decoded = decode_envelope(envelope.SerializeToString())

    assert decoded == envelope
    assert decoded.data.type_url == "type.googleapis.com/mc.policy.v1.PolicyDecisionEvent"
    assert dict(envelope_headers(envelope)) == {
        "ce_id": b"evt-1",
        "ce_type": EVENT_TYPE.encode(),
        "ce_source": b"mc-edge-policy/pod-1",
        "ce_time": b"2025-01-31T12:00:05.250Z",
        "ce_tenant": b"tenant-a",
        "ce_schemaversion": b"2",
        "content-type": b"application/protobuf",
    }


@pytest.mark.parametrize(
    "value",
    [None, b"", b"\xff\xff\xff not protobuf", EventEnvelope(type="t").SerializeToString()],
    ids=["none", "empty", "garbage", "no-id"],
)
def test_malformed_values_are_rejected(value: bytes | None) -> None:
    with pytest.raises(MalformedEventError):
        decode_envelope(value)
    with pytest.raises(MalformedEventError):
        decode_record([], b"t", value)


def test_unpack_checks_the_payload_type() -> None:
    envelope = build_envelope(tenant="t", event_type=EVENT_TYPE, message=decision("d"), source="s")
    legacy = decode_record([], b"t", envelope.SerializeToString())
    event = ReceivedEvent(event=legacy, topic="x", partition=0, offset=0, key=b"t")

    assert event.unpack(PolicyDecisionEvent).decision_id == "d"
    with pytest.raises(MalformedEventError, match=r"not mc\.common\.v1\.EventEnvelope"):
        event.unpack(EventEnvelope)


async def test_publish_and_consume_round_trip(
    kafka_bootstrap: str,
    topic_name: Callable[[str], str],
    kafka_consumer_timings: GroupTimings,
) -> None:
    topic = topic_name("decisions")
    async with publisher(kafka_bootstrap) as pub:
        published = await pub.publish(
            topic, "tenant-a", EVENT_TYPE, decision("d-1"), schema_version=3, event_id="evt-1"
        )
    assert (published.event_id, published.topic, published.offset) == ("evt-1", topic, 0)

    collector = Collector()
    consumer = EventConsumer(
        kafka_bootstrap,
        topic,
        group_id=topic_name("group"),
        handler=collector,
        timings=kafka_consumer_timings,
    )
    async with running(consumer):
        [event] = await collector.wait_for(1)

    assert event.id == "evt-1"
    assert event.event_type == EVENT_TYPE
    assert event.tenant == "tenant-a"
    assert event.key == b"tenant-a"
    assert event.partition == published.partition
    assert event.source == "mc-test/pod-1"
    assert event.schema_version == 3
    assert event.unpack(PolicyDecisionEvent) == decision("d-1")
    assert event.headers["ce_specversion"] == b"1.0"
    assert event.headers["ce_id"] == b"evt-1"
    assert event.headers["ce_type"] == EVENT_TYPE.encode()
    assert event.headers["ce_mctenant"] == b"tenant-a"
    assert event.headers["ce_mcschemaversion"] == b"3"
    assert event.headers["content-type"] == b"application/protobuf"
    assert event.headers["ce_dataschema"] == b"type.googleapis.com/mc.policy.v1.PolicyDecisionEvent"
    assert event.event.time is not None
    assert consumer.processed == 1


async def test_batch_publish_keeps_per_tenant_order(
    kafka_bootstrap: str,
    topic_name: Callable[[str], str],
    kafka_consumer_timings: GroupTimings,
) -> None:
    topic = topic_name("batch")
    batch = [
        OutgoingEvent(tenant=f"tenant-{i % 2}", event_type=EVENT_TYPE, message=decision(f"d-{i}"))
        for i in range(6)
    ]
    async with publisher(kafka_bootstrap) as pub:
        published = await pub.publish_batch(topic, batch)
    assert len({p.event_id for p in published}) == 6

    collector = Collector()
    consumer = EventConsumer(
        kafka_bootstrap,
        topic,
        group_id=topic_name("group"),
        handler=collector,
        timings=kafka_consumer_timings,
    )
    async with running(consumer):
        events = await collector.wait_for(6)

    for tenant, expected in (
        ("tenant-0", ["d-0", "d-2", "d-4"]),
        ("tenant-1", ["d-1", "d-3", "d-5"]),
    ):
        seen = [e.unpack(PolicyDecisionEvent).decision_id for e in events if e.tenant == tenant]
        assert seen == expected


async def test_restarted_group_resumes_after_the_last_commit(
    kafka_bootstrap: str,
    topic_name: Callable[[str], str],
    kafka_consumer_timings: GroupTimings,
) -> None:
    topic, group = topic_name("resume"), topic_name("group")

    def make_consumer(handler: Collector) -> EventConsumer:
        return EventConsumer(
            kafka_bootstrap, topic, group_id=group, handler=handler, timings=kafka_consumer_timings
        )

    async with publisher(kafka_bootstrap) as pub:
        for i in range(3):
            await pub.publish(topic, "tenant-a", EVENT_TYPE, decision(f"d-{i}"), event_id=f"e{i}")
        first = Collector()
        async with running(make_consumer(first)):
            await first.wait_for(3)
        for i in range(3, 6):
            await pub.publish(topic, "tenant-a", EVENT_TYPE, decision(f"d-{i}"), event_id=f"e{i}")

    second = Collector()
    async with running(make_consumer(second)):
        await second.wait_for(3)
        await asyncio.sleep(0.5)  # room for an (unexpected) redelivery to show up

    assert [e.id for e in first.events] == ["e0", "e1", "e2"]
    assert [e.id for e in second.events] == ["e3", "e4", "e5"]
    assert sum((await committed_offsets(kafka_bootstrap, group, topic)).values()) == 6


async def test_redelivered_events_apply_side_effects_once(
    kafka_bootstrap: str,
    pg_dsn: str,
    topic_name: Callable[[str], str],
    kafka_consumer_timings: GroupTimings,
) -> None:
    topic, group = topic_name("redeliver"), topic_name("group")
    pool: Pool = await create_pool(pg_dsn, 1, 4)
    try:
        store = ProcessedEvents(pool, consumer=group)
        await store.ensure_schema()
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE ledger (decision_id text, tenant text)")

        async def apply(event: ReceivedEvent) -> bool:
            payload = event.unpack(PolicyDecisionEvent)

            async def record(conn: AsyncConnection[Any]) -> None:
                await conn.execute(
                    "INSERT INTO ledger VALUES (%s, %s)", (payload.decision_id, event.tenant)
                )

            return await store.run_once(event.id, record)

        async with publisher(kafka_bootstrap) as pub:
            for i in range(3):
                await pub.publish(topic, "tenant-a", EVENT_TYPE, decision(f"d-{i}"))

        # Delivery 1: a member applies the side effects, then dies before committing.
        crashed = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **kafka_consumer_timings.consumer_options(),
        )
        await crashed.start()
        first_results: list[bool] = []
        try:
            async with asyncio.timeout(WAIT):
                while len(first_results) < 3:
                    for batch in (await crashed.getmany(timeout_ms=200)).values():
                        for record in batch:
                            decoded = decode_record(record.headers, record.key, record.value)
                            event = ReceivedEvent(
                                decoded, topic, record.partition, record.offset, None
                            )
                            first_results.append(await apply(event))
        finally:
            await crashed.stop()  # no commit
        assert first_results == [True, True, True]

        # Delivery 2: the group redelivers everything; the store turns it into no-ops.
        second_results: list[bool] = []
        redelivered_all = asyncio.Event()

        async def handler(event: ReceivedEvent) -> None:
            second_results.append(await apply(event))
            if len(second_results) == 3:
                redelivered_all.set()

        consumer = EventConsumer(
            kafka_bootstrap, topic, group_id=group, handler=handler, timings=kafka_consumer_timings
        )
        async with running(consumer):
            async with asyncio.timeout(WAIT):
                await redelivered_all.wait()

        assert second_results == [False, False, False]
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT decision_id FROM ledger ORDER BY decision_id")
            assert await cursor.fetchall() == [("d-0",), ("d-1",), ("d-2",)]
        assert await store.seen(event.id)
        assert not await store.seen("never-published")
    finally:
        await pool.close()


async def test_idempotent_block_rolls_back_with_its_side_effects(pg_dsn: str) -> None:
    pool: Pool = await create_pool(pg_dsn, 1, 2)
    try:
        store = ProcessedEvents(pool, consumer="c")
        await store.ensure_schema()
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE effects (n int)")

        with pytest.raises(RuntimeError, match="boom"):
            async with pool.connection() as conn, idempotent(conn, "c", "evt-1") as first:
                assert first
                await conn.execute("INSERT INTO effects VALUES (1)")
                raise RuntimeError("boom")

        assert not await store.seen("evt-1")  # the failed attempt left no trace
        async with pool.connection() as conn, idempotent(conn, "c", "evt-1") as first:
            assert first
            await conn.execute("INSERT INTO effects VALUES (2)")
        async with pool.connection() as conn, idempotent(conn, "c", "evt-1") as first:
            assert not first
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT n FROM effects")
            assert await cursor.fetchall() == [(2,)]
    finally:
        await pool.close()


async def test_poison_records_go_to_the_dead_letter_topic_and_are_committed(
    kafka_bootstrap: str,
    topic_name: Callable[[str], str],
    kafka_consumer_timings: GroupTimings,
) -> None:
    topic, group = topic_name("poison"), topic_name("group")
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=False)
    await raw.start()
    try:
        poison = await raw.send_and_wait(
            topic,
            b"\x08\x96\x01 definitely not an envelope",
            key=b"tenant-a",
            headers=[("x", b"1")],
        )
    finally:
        await raw.stop()
    async with publisher(kafka_bootstrap) as pub:
        await pub.publish(topic, "tenant-a", EVENT_TYPE, decision("good"), event_id="good")

    collector = Collector()
    consumer = EventConsumer(
        kafka_bootstrap, topic, group_id=group, handler=collector, timings=kafka_consumer_timings
    )
    async with running(consumer):
        await collector.wait_for(1)
        [dead] = await read_topic(kafka_bootstrap, dead_letter_topic(topic), 1)

    assert [e.id for e in collector.events] == ["good"]
    assert consumer.dead_lettered == 1
    assert dead.key == b"tenant-a"
    assert dead.value == b"\x08\x96\x01 definitely not an envelope"
    headers = dict(dead.headers)
    assert headers["x"] == b"1"
    assert b"neither a CloudEvent nor an envelope" in headers[HEADER_DLQ_ERROR]
    assert headers[HEADER_DLQ_ERROR_TYPE] == b"MalformedEventError"
    assert headers[HEADER_DLQ_TOPIC] == topic.encode()
    assert headers[HEADER_DLQ_OFFSET] == str(poison.offset).encode()
    committed = await committed_offsets(kafka_bootstrap, group, topic)
    assert committed[poison.partition] >= poison.offset + 1


async def test_handler_failures_are_retried_in_order_never_skipped(
    kafka_bootstrap: str,
    topic_name: Callable[[str], str],
    kafka_consumer_timings: GroupTimings,
) -> None:
    topic, group = topic_name("retry"), topic_name("group")
    async with publisher(kafka_bootstrap) as pub:
        for name in ("flaky", "after", "rejected"):
            await pub.publish(topic, "tenant-a", EVENT_TYPE, decision(name), event_id=name)

    attempts: list[str] = []
    collector = Collector()

    async def handler(event: ReceivedEvent) -> None:
        attempts.append(event.id)
        if event.id == "flaky" and attempts.count("flaky") < 3:
            raise ConnectionError("database away")
        if event.id == "rejected":
            raise DeadLetterEvent("schema version 3 is not supported")
        await collector(event)

    consumer = EventConsumer(
        kafka_bootstrap,
        topic,
        group_id=group,
        handler=handler,
        retry_initial_backoff=0.05,
        timings=kafka_consumer_timings,
    )
    async with running(consumer):
        await collector.wait_for(2)
        [dead] = await read_topic(kafka_bootstrap, dead_letter_topic(topic), 1)

    assert attempts == ["flaky", "flaky", "flaky", "after", "rejected"]
    assert [e.id for e in collector.events] == ["flaky", "after"]
    assert consumer.retries == 2
    assert dict(dead.headers)[HEADER_DLQ_ERROR] == b"schema version 3 is not supported"
    assert sum((await committed_offsets(kafka_bootstrap, group, topic)).values()) == 3


async def test_stop_while_retrying_leaves_the_record_uncommitted(
    kafka_bootstrap: str,
    topic_name: Callable[[str], str],
    kafka_consumer_timings: GroupTimings,
) -> None:
    topic, group = topic_name("stuck"), topic_name("group")
    async with publisher(kafka_bootstrap) as pub:
        await pub.publish(topic, "tenant-a", EVENT_TYPE, decision("ok"), event_id="ok")
        await pub.publish(topic, "tenant-a", EVENT_TYPE, decision("stuck"), event_id="stuck")

    failing = asyncio.Event()

    async def handler(event: ReceivedEvent) -> None:
        if event.id == "stuck":
            failing.set()
            raise ConnectionError("still down")

    consumer = EventConsumer(
        kafka_bootstrap,
        topic,
        group_id=group,
        handler=handler,
        retry_initial_backoff=0.05,
        retry_max_backoff=0.2,
        timings=kafka_consumer_timings,
    )
    async with running(consumer):
        async with asyncio.timeout(WAIT):
            await failing.wait()
        await asyncio.sleep(0.3)

    assert consumer.processed == 1
    assert consumer.retries >= 1
    # "ok" is committed, "stuck" is not: the next member starts at it.
    assert sum((await committed_offsets(kafka_bootstrap, group, topic)).values()) == 1


# -- failure classes: a poison record never stalls a consumer (issue 7 section 3) ---------
# Before the fix every handler failure was retried forever, in the one loop that served every
# partition: a record whose data Postgres refuses stopped the whole consumer, and an event id
# redelivered with another body was silently ignored.


def decision_with(decision_id: str, reason: str = "") -> PolicyDecisionEvent:
    return PolicyDecisionEvent(
        decision_id=decision_id, tenant="tenant-a", policy="p", rule="r", reason=reason
    )


@asynccontextmanager
async def ledger(pg_dsn: str, group: str) -> AsyncIterator[tuple[Pool, ProcessedEvents]]:
    pool: Pool = await create_pool(pg_dsn, 1, 4)
    try:
        store = ProcessedEvents(pool, consumer=group)
        await store.ensure_schema()
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE ledger (decision_id text, reason text)")
        yield pool, store
    finally:
        await pool.close()


def recording_handler(store: ProcessedEvents, collector: Collector) -> Any:
    async def handle(event: ReceivedEvent) -> None:
        payload = event.unpack(PolicyDecisionEvent)

        async def write(conn: AsyncConnection[Any]) -> None:
            await conn.execute(
                "INSERT INTO ledger VALUES (%s, %s)", (payload.decision_id, payload.reason)
            )

        await store.run_once(event.id, write, body_sha256=event.body_sha256)
        await collector(event)

    return handle


async def test_data_postgres_refuses_is_dead_lettered_after_max_attempts(
    kafka_bootstrap: str,
    pg_dsn: str,
    topic_name: Callable[[str], str],
    kafka_consumer_timings: GroupTimings,
) -> None:
    topic, group = topic_name("nul"), topic_name("group")
    async with ledger(pg_dsn, group) as (pool, store):
        async with publisher(kafka_bootstrap) as pub:
            await pub.publish(
                topic, "tenant-a", EVENT_TYPE, decision_with("bad", "\x00"), event_id="b"
            )
            await pub.publish(topic, "tenant-a", EVENT_TYPE, decision_with("good"), event_id="g")
        collector = Collector()
        consumer = EventConsumer(
            kafka_bootstrap,
            topic,
            group_id=group,
            handler=recording_handler(store, collector),
            retry_initial_backoff=0.01,
            max_attempts=3,
            timings=kafka_consumer_timings,
        )
        async with running(consumer):
            await collector.wait_for(1)
            [dead] = await read_topic(kafka_bootstrap, dead_letter_topic(topic), 1)
        headers = dict(dead.headers)
        assert headers[HEADER_DLQ_REASON] == b"DATA"
        assert headers[HEADER_DLQ_ATTEMPTS] == b"3"
        assert [e.id for e in collector.events] == ["g"]
        async with pool.connection() as conn:
            rows = await (await conn.execute("SELECT decision_id FROM ledger")).fetchall()
        assert rows == [("good",)]


async def test_transient_failures_are_retried_past_max_attempts(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_consumer_timings: GroupTimings
) -> None:
    topic, group = topic_name("transient"), topic_name("group")
    async with publisher(kafka_bootstrap) as pub:
        await pub.publish(topic, "tenant-a", EVENT_TYPE, decision_with("x"), event_id="x")
    collector = Collector()
    failures = 0

    async def handler(event: ReceivedEvent) -> None:
        nonlocal failures
        if failures < 4:
            failures += 1
            raise psycopg.OperationalError("connection refused")
        await collector(event)

    consumer = EventConsumer(
        kafka_bootstrap,
        topic,
        group_id=group,
        handler=handler,
        retry_initial_backoff=0.01,
        max_attempts=2,
        timings=kafka_consumer_timings,
    )
    async with running(consumer):
        await collector.wait_for(1)
    assert consumer.dead_lettered == 0 and consumer.retries == 4


async def test_a_redelivered_id_with_another_body_is_dead_lettered_as_conflict(
    kafka_bootstrap: str,
    pg_dsn: str,
    topic_name: Callable[[str], str],
    kafka_consumer_timings: GroupTimings,
) -> None:
    topic, group = topic_name("conflict"), topic_name("group")
    async with ledger(pg_dsn, group) as (pool, store):
        async with publisher(kafka_bootstrap) as pub:
            first = decision_with("d", "first")
            await pub.publish(topic, "tenant-a", EVENT_TYPE, first, event_id="same")
            await pub.publish(topic, "tenant-a", EVENT_TYPE, first, event_id="same")  # plain
            other = decision_with("d", "second")
            await pub.publish(topic, "tenant-a", EVENT_TYPE, other, event_id="same")
            await pub.publish(topic, "tenant-a", EVENT_TYPE, decision_with("z"), event_id="after")
        collector = Collector()
        consumer = EventConsumer(
            kafka_bootstrap,
            topic,
            group_id=group,
            handler=recording_handler(store, collector),
            retry_initial_backoff=0.01,
            timings=kafka_consumer_timings,
        )
        async with running(consumer):
            await collector.wait_for(3)
            [dead] = await read_topic(kafka_bootstrap, dead_letter_topic(topic), 1)
        assert dict(dead.headers)[HEADER_DLQ_REASON] == b"CONFLICT"
        assert [e.id for e in collector.events] == ["same", "same", "after"]
        async with pool.connection() as conn:
            rows = await (await conn.execute("SELECT reason FROM ledger ORDER BY 1")).fetchall()
        assert rows == [("",), ("first",)]


async def test_a_stalled_partition_never_blocks_the_others(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_consumer_timings: GroupTimings
) -> None:
    topic, group = topic_name("partitions"), topic_name("group")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=False)
    await raw.start()

    async def send(partition: int, event_id: str) -> None:
        envelope = build_envelope(
            tenant="tenant-a",
            event_type=EVENT_TYPE,
            message=decision_with(event_id),
            source="t",
            event_id=event_id,
        )
        await raw.send_and_wait(topic, envelope.SerializeToString(), partition=partition)

    stalled = asyncio.Event()
    collector = Collector()

    async def handler(event: ReceivedEvent) -> None:
        if event.id == "stuck":
            stalled.set()
            raise ConnectionError("a dependency of this record is down")
        await collector(event)

    consumer = EventConsumer(
        kafka_bootstrap,
        topic,
        group_id=group,
        handler=handler,
        retry_initial_backoff=0.05,
        retry_max_backoff=0.2,
        timings=kafka_consumer_timings,
    )
    try:
        async with running(consumer):
            await send(0, "stuck")
            async with asyncio.timeout(WAIT):
                await stalled.wait()
            for n in range(3):
                await send(1, f"free-{n}")
            await collector.wait_for(3)
            assert stalled.is_set() and consumer.processed == 3
    finally:
        await raw.stop()
