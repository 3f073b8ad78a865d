"""The pre-CloudEvents event envelope (`mc.common.v1.EventEnvelope`) and `ReceivedEvent`.

MC now writes CloudEvents in binary content mode (`mc_common.events.cloudevents`). The
envelope format (key = tenant, value = serialized `EventEnvelope`, `ce_`-style headers without
`ce_specversion`) is still read by every consumer, and written only by a publisher configured
with `write_format="envelope"`, for the transition described in ADR 0051.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message

from mc.common.v1.event_pb2 import EventEnvelope
from mc_common.events.cloudevents import CloudEvent, MalformedEventError

__all__ = [
    "CONTENT_TYPE",
    "MalformedEventError",
    "ReceivedEvent",
    "build_envelope",
    "decode_envelope",
    "envelope_headers",
    "envelope_of",
]

CONTENT_TYPE = "application/protobuf"
"""Value of the `content-type` header: the record value is a binary protobuf."""

HEADER_ID = "ce_id"
HEADER_TYPE = "ce_type"
HEADER_SOURCE = "ce_source"
HEADER_TIME = "ce_time"
HEADER_TENANT = "ce_tenant"
HEADER_SCHEMA_VERSION = "ce_schemaversion"
HEADER_CONTENT_TYPE = "content-type"

Headers = Sequence[tuple[str, bytes]]
"""Kafka record headers as aiokafka takes and returns them."""

M = TypeVar("M", bound=Message)


def build_envelope(
    *,
    tenant: str,
    event_type: str,
    message: Message,
    source: str,
    schema_version: int = 1,
    event_id: str | None = None,
    time: datetime | None = None,
) -> EventEnvelope:
    """Wrap `message` in an envelope; `event_id` defaults to a new UUID4, `time` to now (UTC).

    Raises:
        ValueError: `event_type` or `source` is empty, or `schema_version` is below 1.
    """
    return envelope_of(
        CloudEvent.of(
            tenant=tenant,
            event_type=event_type,
            message=message,
            source=source,
            schema_version=schema_version,
            event_id=event_id,
            time=time,
        )
    )


def envelope_of(event: CloudEvent) -> EventEnvelope:
    """The pre-CloudEvents envelope carrying `event` (a protobuf event: its data and
    `dataschema` become the `Any`)."""
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromDatetime(event.time if event.time is not None else datetime.now(UTC))
    return EventEnvelope(
        id=event.id,
        type=event.type,
        source=event.source,
        time=timestamp,
        tenant=event.tenant,
        schema_version=event.schema_version,
        data=any_pb2.Any(type_url=event.dataschema, value=event.data),
    )


def envelope_headers(envelope: EventEnvelope) -> list[tuple[str, bytes]]:
    """The CloudEvents-style headers for `envelope` (`ce_time` in RFC 3339)."""
    return [
        (HEADER_ID, envelope.id.encode()),
        (HEADER_TYPE, envelope.type.encode()),
        (HEADER_SOURCE, envelope.source.encode()),
        (HEADER_TIME, envelope.time.ToJsonString().encode()),
        (HEADER_TENANT, envelope.tenant.encode()),
        (HEADER_SCHEMA_VERSION, str(envelope.schema_version).encode()),
        (HEADER_CONTENT_TYPE, CONTENT_TYPE.encode()),
    ]


def decode_envelope(value: bytes | None) -> EventEnvelope:
    """Parse a record value into an envelope.

    Raises:
        MalformedEventError: the value is empty, not an `EventEnvelope`, or lacks id or type.
    """
    if not value:
        raise MalformedEventError("record has no value")
    envelope = EventEnvelope()
    try:
        envelope.ParseFromString(value)
    except DecodeError as err:
        raise MalformedEventError(f"value is not an EventEnvelope: {err}") from err
    if not envelope.id or not envelope.type:
        raise MalformedEventError("envelope has no id or no type")
    return envelope


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """One decoded event as a consumer handler sees it, with where it came from."""

    event: CloudEvent
    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The event id; deduplicate side effects on it."""
        return self.event.id

    @property
    def event_type(self) -> str:
        """The event type, for example `mc.policy.decision.v1`."""
        return self.event.type

    @property
    def source(self) -> str:
        """The producer, for example `mc-edge-policy/pod-1`."""
        return self.event.source

    @property
    def tenant(self) -> str:
        """The tenant the event belongs to (`mctenant`, else the record key)."""
        return self.event.tenant

    @property
    def schema_version(self) -> int:
        """The payload schema version (`mcschemaversion`, 1 when absent)."""
        return self.event.schema_version

    @property
    def body_sha256(self) -> str:
        """Hex SHA-256 of what the event says (type, tenant, schema version, data and its
        schema), so a redelivery with the same id and another body can be told from a plain
        redelivery, whichever format carried it."""
        event = self.event
        digest = hashlib.sha256()
        for part in (
            event.type.encode(),
            event.tenant.encode(),
            str(event.schema_version).encode(),
            event.dataschema.encode(),
            event.datacontenttype.encode(),
            event.data,
        ):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return digest.hexdigest()

    def unpack(self, message_type: type[M]) -> M:
        """The data as `message_type`.

        Raises:
            MalformedEventError: the data is another message type, or does not parse.
        """
        message = self.event.unpack(message_type)
        assert isinstance(message, message_type)
        return message
