"""Consumer of `mc.policy.decisions`: records each decision once, however often it arrives."""

from __future__ import annotations

from datetime import UTC

from mc.policy.v1 import decision_events_pb2
from mc_common.errors import MCError
from mc_common.events.consumer import DeadLetterEvent
from mc_common.events.envelope import MalformedEventError, ReceivedEvent
from mc_common.events.idempotency import ProcessedEvents
from mc_common.tenancy import validate_tenant_id
from mc_pql.models import DecisionRecord
from mc_pql.store import ProvenanceStore

DECISION_EVENT_TYPE = "mc.policy.decision.v1"
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})


def decision_from_event(event: ReceivedEvent) -> tuple[str, DecisionRecord]:
    """The tenant and decision an event carries; DeadLetterEvent when it can never be stored."""
    if event.envelope.type != DECISION_EVENT_TYPE:
        raise DeadLetterEvent(f"unexpected event type {event.envelope.type!r}")
    if event.envelope.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
        raise DeadLetterEvent(f"unsupported schema version {event.envelope.schema_version}")
    try:
        message = event.unpack(decision_events_pb2.PolicyDecisionEvent)
        tenant = validate_tenant_id(event.tenant, "tenant")
    except (MalformedEventError, MCError) as exc:
        raise DeadLetterEvent(str(exc)) from exc
    if message.tenant and message.tenant != tenant:
        raise DeadLetterEvent("decision tenant differs from the envelope tenant")
    if not message.decision_id or not message.policy or not message.HasField("decided_at"):
        raise DeadLetterEvent("decision_id, policy and decided_at are required")
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

        async def insert(conn):  # type: ignore[no-untyped-def]
            await self._store.insert_decision(conn, tenant, record)

        await self._processed.run_once(event.id, insert)
