"""Where the limiter's denial aggregates and audit records go: Kafka, or the log."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence

from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from mc.limiter.v1 import limiter_events_pb2 as events_pb
from mc_common.events.publisher import EventPublisher, OutgoingEvent
from mc_limiter.audit import AuditEvent
from mc_limiter.denials import DenyRecord

log = logging.getLogger("mc.limiter.audit")

DENIALS_EVENT_TYPE = "mc.limiter.denials.v1"
AUDIT_EVENT_TYPE = "mc.limiter.audit.v1"
FLEET_TENANT = ""  # key of events that belong to no tenant (global shadow switch)


def _value(data: object) -> struct_pb2.Value:
    value = struct_pb2.Value()
    json_format.Parse(json.dumps(data), value)
    return value


def audit_message(event: AuditEvent) -> events_pb.LimiterAuditEvent:
    time = Timestamp()
    time.FromMilliseconds(event.time_ms)
    return events_pb.LimiterAuditEvent(
        action=event.action,
        actor=event.actor,
        target=event.target,
        before=_value(event.before),
        after=_value(event.after),
        reason=event.reason,
        tenant=event.tenant or "",
        time=time,
    )


def denials_message(record: DenyRecord, region: str) -> events_pb.DenialsEvent:
    second = Timestamp(seconds=record.second)
    return events_pb.DenialsEvent(
        tenant=record.tenant,
        rule_id=record.rule_id,
        limit_name=record.limit_name,
        key=record.key,
        mode=record.mode,
        second=second,
        count=record.count,
        region=region,
    )


def denials_event_id(record: DenyRecord, region: str) -> str:
    """Stable per aggregate, so a re-published batch is recognisably the same events."""
    r = record
    fields = (region, r.tenant, r.rule_id, r.limit_name, r.key, r.mode, r.second, r.count)
    group = "|".join(str(f) for f in fields)
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"mc.limiter.denials:{group}"))


class KafkaDenySink:
    """Publishes denial aggregates to `mc.limiter.decisions`, keyed by tenant."""

    def __init__(self, publisher: EventPublisher, topic: str, region: str) -> None:
        self._publisher = publisher
        self._topic = topic
        self._region = region

    async def publish(self, records: Sequence[DenyRecord]) -> None:
        await self._publisher.publish_batch(
            self._topic,
            [
                OutgoingEvent(
                    tenant=r.tenant,
                    event_type=DENIALS_EVENT_TYPE,
                    message=denials_message(r, self._region),
                    event_id=denials_event_id(r, self._region),
                )
                for r in records
            ],
        )


class KafkaAuditSink:
    """Publishes each operator change to `mc.limiter.audit` (and logs it)."""

    def __init__(self, publisher: EventPublisher, topic: str) -> None:
        self._publisher = publisher
        self._topic = topic

    async def emit(self, event: AuditEvent) -> None:
        LogAuditSink.write(event)
        await self._publisher.publish(
            self._topic,
            event.tenant or FLEET_TENANT,
            AUDIT_EVENT_TYPE,
            audit_message(event),
            event_id=event.id,
        )


class LogAuditSink:
    """Writes each operator change as a structured log line (when no Kafka is configured)."""

    @staticmethod
    def write(event: AuditEvent) -> None:
        log.info(
            "limiter change",
            extra={
                "action": event.action,
                "actor": event.actor,
                "target": event.target,
                "before": event.before,
                "after": event.after,
                "reason": event.reason,
                "event_id": event.id,
            },
        )

    async def emit(self, event: AuditEvent) -> None:
        self.write(event)
