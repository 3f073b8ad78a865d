"""Consumer of `mc.policy.decisions`: records each decision once, however often it arrives.

An event's decision obeys the same proto rules as one recorded by RPC (it is converted to a
`PolicyDecision` and validated: ADR 0030); an event that can never be stored is dead-lettered
with its reason, and one that contradicts a stored decision as CONFLICT.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from psycopg import AsyncConnection

from mc.policy.v1 import decision_events_pb2
from mc.pql.v1 import provenance_pb2 as pb
from mc_common.errors import InvalidArgument, MCError
from mc_common.events.envelope import MalformedEventError, ReceivedEvent
from mc_common.events.failures import DeadLetterEvent, DeadLetterReason
from mc_common.events.idempotency import ProcessedEvents
from mc_common.tenancy import validate_tenant_id
from mc_pql import rules
from mc_pql.models import DecisionRecord
from mc_pql.provenance import check_same_decision
from mc_pql.store import ProvenanceStore

DECISION_EVENT_TYPE = "mc.policy.decision.v1"
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})


def decision_from_event(event: ReceivedEvent) -> tuple[str, DecisionRecord]:
    """The tenant and decision an event carries; DeadLetterEvent when it can never be stored."""
    if event.event_type != DECISION_EVENT_TYPE:
        raise DeadLetterEvent(f"unexpected event type {event.event_type!r}")
    if event.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
        raise DeadLetterEvent(f"unsupported schema version {event.schema_version}")
    try:
        message = event.unpack(decision_events_pb2.PolicyDecisionEvent)
    except MalformedEventError as exc:
        raise DeadLetterEvent(str(exc), reason=DeadLetterReason.DECODE) from exc
    try:
        tenant = validate_tenant_id(event.tenant, "tenant")
    except MCError as exc:
        raise DeadLetterEvent(str(exc), reason=DeadLetterReason.DATA) from exc
    if message.tenant and message.tenant != tenant:
        raise DeadLetterEvent("decision tenant differs from the envelope tenant")
    as_recorded = pb.PolicyDecision(
        decision_id=message.decision_id,
        execution_id=message.execution_id,
        policy=message.policy,
        bundle_digest=message.bundle_digest,
        rule=message.rule,
        allow=message.allow,
        reason=message.reason,
        remediation=message.remediation,
        decided_at=message.decided_at if message.HasField("decided_at") else None,
    )
    try:
        rules.check(as_recorded, "data")
    except InvalidArgument as exc:
        raise DeadLetterEvent(exc.message, reason=DeadLetterReason.DATA) from exc
    return tenant, DecisionRecord(
        decision_id=message.decision_id,
        execution_id=message.execution_id,
        policy=message.policy,
        bundle_digest=message.bundle_digest,
        rule=message.rule,
        allow=message.allow,
        reason=message.reason,
        remediation=message.remediation,
        decided_at=message.decided_at.ToDatetime(tzinfo=UTC),
    )


class DecisionEventHandler:
    """Stores a decision and marks its event processed in one transaction."""

    def __init__(self, store: ProvenanceStore, processed: ProcessedEvents) -> None:
        self._store = store
        self._processed = processed

    async def __call__(self, event: ReceivedEvent) -> None:
        tenant, record = decision_from_event(event)

        async def insert(conn: AsyncConnection[Any]) -> None:
            if not await self._store.insert_decision(conn, tenant, record):
                stored = await self._store.decision_on(conn, tenant, record.decision_id)
                if stored is not None:
                    check_same_decision(stored, record)  # ALREADY_EXISTS: dead-lettered

        await self._processed.run_once(event.id, insert, body_sha256=event.body_sha256)
