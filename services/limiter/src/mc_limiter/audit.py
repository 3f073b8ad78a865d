"""Audit records for operator changes (rules, throttle levels, the global shadow switch).

The limiter hands each record to an injected ``AuditSink``; the service wires that to Kafka.
Records are plain data so a sink can serialise them however its transport needs.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One operator change. ``before``/``after`` are JSON-ready snapshots (None if absent)."""

    action: str  # e.g. "limiter.throttle.set", "limiter.rule.put", "limiter.rule.delete"
    actor: str
    target: str  # what changed: a tenant id, a rule id, or "global"
    before: Any
    after: Any
    reason: str = ""
    tenant: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time_ms: int = field(default_factory=lambda: int(time.time() * 1000))


class AuditSink(Protocol):
    async def emit(self, event: AuditEvent) -> None: ...


class NullAuditSink:
    """Drops events (for tools and tests that do not care)."""

    async def emit(self, event: AuditEvent) -> None:
        return None


class MemoryAuditSink:
    """Keeps events in a list (tests, and the local dev fleet without Kafka)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def emit(self, event: AuditEvent) -> None:
        self.events.append(event)
