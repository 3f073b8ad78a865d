"""Aggregation of denials: one record per (tenant, rule, limit, key, mode, second) with a
count, flushed periodically to an injected sink (the service publishes them to the Kafka topic
``mc.limiter.decisions``). A deny storm then costs one record per second per key, not one
per request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from mc_common.periodic import Periodic

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DenyRecord:
    """Denials in one second. ``mode`` is ``enforce`` (denied) or ``shadow`` (would-deny)."""

    tenant: str
    rule_id: str
    limit_name: str
    key: str
    mode: str
    second: int  # unix seconds
    count: int


class DenySink(Protocol):
    async def publish(self, records: Sequence[DenyRecord]) -> None: ...


_Group = tuple[str, str, str, str, str, int]


class DenyAggregator:
    """Counts denials in memory and flushes them every ``flush_interval_ms``.

    If the sink fails, the batch is kept and merged into the next flush (at-least-once toward
    the sink; consumers dedupe on the record's group). At most ``max_groups`` groups are held;
    beyond that new groups are dropped and counted in ``dropped``.
    """

    def __init__(
        self, sink: DenySink, flush_interval_ms: int = 1000, max_groups: int = 100_000
    ) -> None:
        self._sink = sink
        self._interval = flush_interval_ms / 1000
        self._max = max_groups
        self._pending: dict[_Group, int] = {}
        self._loop = Periodic("deny-flush", flush_interval_ms / 1000, self.flush)
        self.dropped = 0

    def record(
        self, tenant: str, rule_id: str, limit_name: str, key: str, mode: str, second: int
    ) -> None:
        group = (tenant, rule_id, limit_name, key, mode, second)
        count = self._pending.get(group)
        if count is None and len(self._pending) >= self._max:
            self.dropped += 1
            return
        self._pending[group] = (count or 0) + 1

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}
        records = [DenyRecord(*group, count=count) for group, count in batch.items()]
        try:
            await self._sink.publish(records)
        except Exception:
            log.exception("deny sink failed; keeping %d records for the next flush", len(batch))
            for group, count in batch.items():
                if group in self._pending or len(self._pending) < self._max:
                    self._pending[group] = self._pending.get(group, 0) + count
                else:
                    self.dropped += count
            return 0
        return len(records)

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.stop()
        await self.flush()


class MemoryDenySink:
    """Collects records in a list (tests, local dev)."""

    def __init__(self) -> None:
        self.records: list[DenyRecord] = []

    async def publish(self, records: Sequence[DenyRecord]) -> None:
        self.records.extend(records)
