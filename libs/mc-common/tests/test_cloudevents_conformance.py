"""MC's events against the CloudEvents Python SDK (an independent implementation of the Kafka
protocol binding): what MC writes, the SDK reads as a binary-mode CloudEvent with every
attribute; what the SDK writes in binary or structured mode, MC's consumer accepts; and records
of the pre-CloudEvents envelope are still read (the transition, ADR 0051)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cloudevents.core.bindings import kafka as sdk_kafka
from cloudevents.core.v1.event import CloudEvent as SdkEvent
from google.protobuf import json_format

from mc.policy.v1.decision_events_pb2 import PolicyDecisionEvent
from mc_common.events import (
    EventConsumer,
    EventPublisher,
    GroupTimings,
    ReceivedEvent,
    build_envelope,
)

EVENT_TYPE = "mc.policy.decision.v1"
WAIT = 20.0


def decision(decision_id: str) -> PolicyDecisionEvent:
    return PolicyDecisionEvent(
        decision_id=decision_id, tenant="acme", policy="mc.limits", rule="r1", allow=False
    )


async def test_what_mc_publishes_the_sdk_reads_as_a_binary_cloudevent(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_consumer_timings: GroupTimings
) -> None:
    topic = topic_name("ce-out")
    async with EventPublisher(kafka_bootstrap, source="mc-test/pod-1") as pub:
        await pub.publish(topic, "acme", EVENT_TYPE, decision("d-1"), event_id="evt-1")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=topic_name("raw"),
        **kafka_consumer_timings.consumer_options(),
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), WAIT)
    finally:
        await consumer.stop()
    message = sdk_kafka.KafkaMessage(
        headers=dict(record.headers), key=record.key, value=record.value
    )
    event = sdk_kafka.from_kafka_event(message)  # the SDK picks the mode itself
    attributes = event.get_attributes()
    assert attributes["specversion"] == "1.0"
    assert attributes["id"] == "evt-1"
    assert attributes["source"] == "mc-test/pod-1"
    assert attributes["type"] == EVENT_TYPE
    assert attributes["datacontenttype"] == "application/protobuf"
    assert attributes["dataschema"] == "type.googleapis.com/mc.policy.v1.PolicyDecisionEvent"
    assert attributes["mctenant"] == "acme"
    assert attributes["time"] is not None
    assert record.key == b"acme"
    # the record value is the payload message itself, not a wrapper
    assert PolicyDecisionEvent.FromString(record.value) == decision("d-1")


async def test_the_consumer_accepts_sdk_events_in_every_mode_and_the_legacy_envelope(
    kafka_bootstrap: str, topic_name: Callable[[str], str], kafka_consumer_timings: GroupTimings
) -> None:
    topic = topic_name("ce-in")
    base = {"type": EVENT_TYPE, "source": "urn:example:pdp", "mctenant": "acme"}
    as_json = json_format.MessageToDict(decision("json-binary"))
    messages = [
        sdk_kafka.to_binary_event(
            SdkEvent({**base, "id": "b-proto", "datacontenttype": "application/protobuf"},
                     decision("proto-binary").SerializeToString())
        ),
        sdk_kafka.to_binary_event(
            SdkEvent({**base, "id": "b-json", "datacontenttype": "application/json"}, as_json)
        ),
        sdk_kafka.to_structured_event(
            SdkEvent({**base, "id": "s-json", "datacontenttype": "application/json"},
                     json_format.MessageToDict(decision("json-structured")))
        ),
        sdk_kafka.to_structured_event(
            SdkEvent({**base, "id": "s-proto", "datacontenttype": "application/protobuf"},
                     decision("proto-structured").SerializeToString())
        ),
    ]  # fmt: skip
    legacy = build_envelope(
        tenant="acme", event_type=EVENT_TYPE, message=decision("legacy"), source="old", event_id="l"
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for m in messages:
            key = m.key.encode() if isinstance(m.key, str) else (m.key or b"acme")
            await producer.send_and_wait(topic, m.value, key=key, headers=list(m.headers.items()))
        await producer.send_and_wait(topic, legacy.SerializeToString(), key=b"acme")
    finally:
        await producer.stop()

    seen: list[ReceivedEvent] = []
    done = asyncio.Event()

    async def handler(event: ReceivedEvent) -> None:
        seen.append(event)
        if len(seen) == 5:
            done.set()

    consumer = EventConsumer(
        kafka_bootstrap,
        topic,
        group_id=topic_name("group"),
        handler=handler,
        timings=kafka_consumer_timings,
    )
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(done.wait(), WAIT)
    finally:
        await consumer.stop()
        await task
    decoded = {e.id: e.unpack(PolicyDecisionEvent).decision_id for e in seen}
    assert decoded == {
        "b-proto": "proto-binary",
        "b-json": "json-binary",
        "s-json": "json-structured",
        "s-proto": "proto-structured",
        "l": "legacy",
    }
    assert {e.tenant for e in seen} == {"acme"}
    assert consumer.dead_lettered == 0


def test_the_envelope_written_during_the_transition_reads_back_as_the_same_event() -> None:
    from mc_common.events import CloudEvent, decode_record
    from mc_common.events.envelope import envelope_headers, envelope_of

    event = CloudEvent.of(
        tenant="acme", event_type=EVENT_TYPE, message=decision("d-9"), source="mc-test"
    )
    envelope = envelope_of(event)
    read = decode_record(envelope_headers(envelope), b"acme", envelope.SerializeToString())
    assert (read.id, read.type, read.tenant, read.source) == (
        event.id,
        EVENT_TYPE,
        "acme",
        "mc-test",
    )
    assert read.unpack(PolicyDecisionEvent) == decision("d-9")
    assert read.dataschema == event.dataschema
