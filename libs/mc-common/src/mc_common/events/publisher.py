"""`EventPublisher`: publish protobuf events to Kafka, returning only once the broker acked.

Records are CloudEvents in the Kafka binding's binary content mode (see
`mc_common.events.cloudevents`): keyed by tenant (so one tenant's events stay ordered within a
partition), the value is the payload message, the attributes are `ce_` headers. With
`write_format="envelope"` the publisher writes the pre-CloudEvents envelope instead, for fleets
whose consumers are not all upgraded yet (ADR 0051). The producer uses
`acks="all"` and no idempotence (Tansu, the broker used in dev and tests, has no idempotent
producer); a retried publish may therefore write a duplicate, which consumers drop by event id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self

from aiokafka import AIOKafkaProducer
from google.protobuf.message import Message

from mc_common.events.cloudevents import CloudEvent
from mc_common.events.envelope import envelope_headers, envelope_of
from mc_common.events.security import KafkaSecurity


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """One event of a batch; fix `event_id` yourself if you may retry the batch."""

    tenant: str
    event_type: str
    message: Message
    schema_version: int = 1
    event_id: str | None = None
    time: datetime | None = None


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    """Where the broker stored an event."""

    event_id: str
    topic: str
    partition: int
    offset: int


def producer_options() -> dict[str, Any]:
    """The AIOKafkaProducer settings every MC publisher needs (also for a shared producer)."""
    # acks=all: an acked record survives the leader's loss. Idempotence stays off because
    # Tansu rejects InitProducerId; duplicates are handled by idempotent consumers instead.
    return {"acks": "all", "enable_idempotence": False}


class EventPublisher:
    """Publishes protobuf events as CloudEvents; use as `async with EventPublisher(...) as pub`.

    Args:
        bootstrap_servers: `host:port[,host:port]` of the Kafka cluster.
        source: default `ce_source`, naming the producing service and instance.
        client_id: Kafka client id shown in broker logs.
        request_timeout_ms: how long one produce request may take before it fails.
        producer: an already configured producer to use instead of creating one; the publisher
            then does not start or stop it.
        write_format: `cloudevents` (binary content mode, the default) or `envelope` (the
            pre-CloudEvents format, only while old consumers are still deployed).
        security: TLS and SASL of the connection (`KafkaSecurity`); plaintext by default.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        source: str,
        client_id: str | None = None,
        request_timeout_ms: int = 30_000,
        producer: AIOKafkaProducer | None = None,
        write_format: Literal["cloudevents", "envelope"] = "cloudevents",
        security: KafkaSecurity | None = None,
    ) -> None:
        if not source:
            raise ValueError("source must not be empty")
        if write_format not in ("cloudevents", "envelope"):
            raise ValueError(f"write_format must be cloudevents or envelope, not {write_format!r}")
        self._write_format = write_format
        self._client_options = (security or KafkaSecurity()).client_options()
        self._bootstrap_servers = bootstrap_servers
        self._source = source
        self._client_id = client_id or f"mc-publisher-{source}"
        self._request_timeout_ms = request_timeout_ms
        self._owns_producer = producer is None
        self._producer = producer

    @property
    def producer(self) -> AIOKafkaProducer:
        """The underlying producer (started)."""
        if self._producer is None:
            raise RuntimeError("EventPublisher is not started; call start() or use async with")
        return self._producer

    async def start(self) -> None:
        """Connect to the cluster (no-op with an injected producer)."""
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap_servers,
            client_id=self._client_id,
            request_timeout_ms=self._request_timeout_ms,
            **producer_options(),
            **self._client_options,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        """Flush pending sends and close (an injected producer is left alone)."""
        if self._owns_producer and self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def publish(
        self,
        topic: str,
        tenant: str,
        event_type: str,
        message: Message,
        *,
        schema_version: int = 1,
        event_id: str | None = None,
        source: str | None = None,
        time: datetime | None = None,
    ) -> PublishedEvent:
        """Publish one event and wait for the broker's ack.

        Returns only once the record is durably written (acks=all); on an exception the event
        may or may not have been written, so retry with the same `event_id`.
        """
        event = CloudEvent.of(
            tenant=tenant,
            event_type=event_type,
            message=message,
            source=source or self._source,
            schema_version=schema_version,
            event_id=event_id,
            time=time,
        )
        return await self.publish_event(topic, event)

    async def publish_event(self, topic: str, event: CloudEvent) -> PublishedEvent:
        """Publish a ready event (for relays and replays) and wait for the ack."""
        future = await self._send(topic, event)
        metadata = await future
        return PublishedEvent(event.id, topic, metadata.partition, metadata.offset)

    async def publish_batch(
        self, topic: str, events: Sequence[OutgoingEvent], *, source: str | None = None
    ) -> list[PublishedEvent]:
        """Publish several events, pipelined, and return once the broker acked all of them.

        Order is kept per tenant (same key, same partition). If any send fails the exception
        is raised after every send settled; some events may be written, so retry the whole
        batch with the same event ids.
        """
        built = [
            CloudEvent.of(
                tenant=event.tenant,
                event_type=event.event_type,
                message=event.message,
                source=source or self._source,
                schema_version=event.schema_version,
                event_id=event.event_id,
                time=event.time,
            )
            for event in events
        ]
        futures = [await self._send(topic, event) for event in built]
        results = await asyncio.gather(*futures, return_exceptions=True)
        published: list[PublishedEvent] = []
        for event, result in zip(built, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            published.append(PublishedEvent(event.id, topic, result.partition, result.offset))
        return published

    async def _send(self, topic: str, event: CloudEvent) -> asyncio.Future[Any]:
        if self._write_format == "envelope":
            envelope = envelope_of(event)
            value, headers = envelope.SerializeToString(), envelope_headers(envelope)
        else:
            value, headers = event.data, event.binary_headers()
        future: asyncio.Future[Any] = await self.producer.send(
            topic, value=value, key=event.tenant.encode(), headers=headers
        )
        return future
