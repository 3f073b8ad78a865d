"""The MC event envelope on Kafka: build, encode to record key/value/headers, and decode.

A record is key = tenant id (UTF-8), value = serialized `mc.common.v1.EventEnvelope`, and
CloudEvents-style headers that repeat the envelope fields so tools can route without decoding.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message

from mc.common.v1.event_pb2 import EventEnvelope

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


class MalformedEventError(ValueError):
    """A record value is not a usable `EventEnvelope` (undecodable, or missing id or type)."""


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
    if not event_type:
        raise ValueError("event_type must not be empty")
    if not source:
        raise ValueError("source must not be empty")
    if schema_version < 1:
        raise ValueError(f"schema_version must be >= 1, got {schema_version}")
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromDatetime(time if time is not None else datetime.now(UTC))
    data = any_pb2.Any()
    data.Pack(message)
    return EventEnvelope(
        id=event_id or str(uuid.uuid4()),
        type=event_type,
        source=source,
        time=timestamp,
        tenant=tenant,
        schema_version=schema_version,
        data=data,
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

    envelope: EventEnvelope
    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The event id; deduplicate side effects on it."""
        return self.envelope.id

    @property
    def event_type(self) -> str:
        """The event type, for example `mc.policy.decision.v1`."""
        return self.envelope.type

    @property
    def tenant(self) -> str:
        """The tenant the event belongs to."""
        return self.envelope.tenant

    @property
    def body_sha256(self) -> str:
        """Hex SHA-256 of what the event says (type, tenant, schema version, payload), so a
        redelivery with the same id and another body can be told from a plain redelivery."""
        envelope = self.envelope
        digest = hashlib.sha256()
        for part in (
            envelope.type.encode(),
            envelope.tenant.encode(),
            str(envelope.schema_version).encode(),
            envelope.data.type_url.encode(),
            envelope.data.value,
        ):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return digest.hexdigest()

    def unpack(self, message_type: type[M]) -> M:
        """The payload as `message_type`.

        Raises:
            MalformedEventError: the payload is another message type.
        """
        message = message_type()
        if not self.envelope.data.Unpack(message):
            raise MalformedEventError(
                f"event {self.id} carries {self.envelope.data.type_url!r}, "
                f"not {message_type.DESCRIPTOR.full_name}"
            )
        return message
