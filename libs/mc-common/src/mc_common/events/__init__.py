"""Kafka events for MC services: CloudEvents on the Kafka binding (binary mode written, any
conforming mode read), a publisher, an at-least-once consumer with a dead-letter topic, and the
Postgres store that makes consumers idempotent on event id.

See docs/adr/0004-events-at-least-once.md for the delivery contract and
docs/adr/0051-cloudevents-kafka-binding.md for the format.
"""

from __future__ import annotations

from mc_common.events.cloudevents import (
    DATASCHEMA_PREFIX,
    SPEC_VERSION,
    CloudEvent,
    MalformedEventError,
    decode_record,
)
from mc_common.events.consumer import (
    DEAD_LETTER_SUFFIX,
    HEADER_DLQ_ATTEMPTS,
    HEADER_DLQ_ERROR,
    HEADER_DLQ_ERROR_TYPE,
    HEADER_DLQ_GROUP,
    HEADER_DLQ_OFFSET,
    HEADER_DLQ_PARTITION,
    HEADER_DLQ_REASON,
    HEADER_DLQ_TOPIC,
    EventConsumer,
    GroupTimings,
    Handler,
    dead_letter_topic,
)
from mc_common.events.envelope import (
    CONTENT_TYPE,
    HEADER_CONTENT_TYPE,
    HEADER_ID,
    HEADER_SCHEMA_VERSION,
    HEADER_SOURCE,
    HEADER_TENANT,
    HEADER_TIME,
    HEADER_TYPE,
    ReceivedEvent,
    build_envelope,
    decode_envelope,
    envelope_headers,
)
from mc_common.events.failures import (
    DeadLetterEvent,
    DeadLetterReason,
    EventConflict,
    Failure,
    classify,
)
from mc_common.events.idempotency import (
    PROCESSED_EVENTS_DDL,
    ProcessedEvents,
    ensure_processed_events_table,
    idempotent,
    run_once,
)
from mc_common.events.publisher import (
    EventPublisher,
    OutgoingEvent,
    PublishedEvent,
    producer_options,
)
from mc_common.events.security import KafkaSecurity

__all__ = [
    "CONTENT_TYPE",
    "DATASCHEMA_PREFIX",
    "DEAD_LETTER_SUFFIX",
    "HEADER_CONTENT_TYPE",
    "HEADER_DLQ_ATTEMPTS",
    "HEADER_DLQ_ERROR",
    "HEADER_DLQ_ERROR_TYPE",
    "HEADER_DLQ_GROUP",
    "HEADER_DLQ_OFFSET",
    "HEADER_DLQ_PARTITION",
    "HEADER_DLQ_REASON",
    "HEADER_DLQ_TOPIC",
    "HEADER_ID",
    "HEADER_SCHEMA_VERSION",
    "HEADER_SOURCE",
    "HEADER_TENANT",
    "HEADER_TIME",
    "HEADER_TYPE",
    "PROCESSED_EVENTS_DDL",
    "SPEC_VERSION",
    "CloudEvent",
    "DeadLetterEvent",
    "DeadLetterReason",
    "EventConflict",
    "EventConsumer",
    "EventPublisher",
    "Failure",
    "GroupTimings",
    "Handler",
    "KafkaSecurity",
    "MalformedEventError",
    "OutgoingEvent",
    "ProcessedEvents",
    "PublishedEvent",
    "ReceivedEvent",
    "build_envelope",
    "classify",
    "dead_letter_topic",
    "decode_envelope",
    "decode_record",
    "ensure_processed_events_table",
    "envelope_headers",
    "idempotent",
    "producer_options",
    "run_once",
]
