"""Publishes every decision to `mc.policy.decisions` in the event shape pql consumes.

Decisions are queued (bounded) and published in batches by one background task, so the
decision path never waits for the broker's ack. When the queue stays full (the broker is down
long enough), a new decision is refused with UNAVAILABLE instead of being served unlogged.
Each event's id is its decision id, so a batch retried after a partial failure is deduplicated
by pql's idempotent consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from google.protobuf import timestamp_pb2

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc.policy.v1 import decision_events_pb2 as events_pb
from mc_common.errors import Unavailable
from mc_common.events.publisher import EventPublisher, OutgoingEvent
from mc_edge_policy.pdp import Decision
from mc_edge_policy.redact import redact

log = logging.getLogger("mc.edge_policy.decisions")

DECISION_EVENT_TYPE = "mc.policy.decision.v1"
MAX_BATCH = 256


class DecisionSink(Protocol):
    """Where decisions go once made."""

    async def record(self, decision: Decision) -> None: ...


class DiscardDecisions:
    """No decision log (no Kafka configured): decisions are not published."""

    async def record(self, decision: Decision) -> None:
        return None


def decision_event(decision: Decision) -> events_pb.PolicyDecisionEvent:
    """The `mc.policy.decision.v1` payload of a decision (reasons masked like inputs)."""
    decided_at = timestamp_pb2.Timestamp()
    decided_at.FromDatetime(decision.decided_at)
    masked_reason = redact({"reason": decision.reason})["reason"]
    return events_pb.PolicyDecisionEvent(
        decision_id=decision.decision_id,
        tenant=decision.tenant,
        execution_id=decision.execution_id,
        policy=decision.policy,
        bundle_digest=decision.bundle_digest,
        rule=decision.rule,
        allow=decision.allow,
        reason=str(masked_reason)[:1024],
        remediation=decision.remediation[:1024],
        decided_at=decided_at,
    )


class KafkaDecisionLog:
    """A bounded queue of decisions drained to Kafka by one task (see module docstring)."""

    def __init__(
        self,
        publisher: EventPublisher,
        topic: str,
        *,
        max_pending: int = 10_000,
        enqueue_timeout_s: float = 1.0,
        retry_delay_s: float = 0.5,
    ) -> None:
        self._publisher = publisher
        self._topic = topic
        self._queue: asyncio.Queue[OutgoingEvent] = asyncio.Queue(max_pending)
        self._enqueue_timeout_s = enqueue_timeout_s
        self._retry_delay_s = retry_delay_s
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    async def start(self) -> None:
        await self._publisher.start()
        self._task = asyncio.create_task(self._drain(), name="edge-policy-decision-log")

    async def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Publish what is queued (within the timeout), then stop."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), flush_timeout_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._publisher.stop()

    async def record(self, decision: Decision) -> None:
        event = OutgoingEvent(
            tenant=decision.tenant,
            event_type=DECISION_EVENT_TYPE,
            message=decision_event(decision),
            event_id=decision.decision_id,
            time=decision.decided_at,
        )
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            try:
                await asyncio.wait_for(self._queue.put(event), self._enqueue_timeout_s)
            except TimeoutError as exc:
                raise Unavailable(
                    "the decision log is not accepting decisions; retry later",
                    reason=ErrorReason.ERROR_REASON_DECISION_LOG_UNAVAILABLE,
                ) from exc

    async def _drain(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            while True:
                try:
                    await self._publisher.publish_batch(self._topic, batch)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:  # broker trouble: keep the batch and retry
                    log.warning("decision batch publish failed; retrying", exc_info=True)
                    await asyncio.sleep(self._retry_delay_s)
            self.published += len(batch)
            for _ in batch:
                self._queue.task_done()
