"""Checkpoints issued in the background: every active tenant's log is signed at least once a
second, off the recording path, and published to Kafka for witnesses.

The chain writer reports each tenant's (size, root) after every commit (`observe`, no I/O); a
periodic task signs the newest head of each tenant that grew, stores the checkpoints in one
statement and publishes them (`mc.receipts.checkpoints`, key = tenant). Work per tick is
bounded (`MAX_PER_TICK` tenants; the rest wait for the next tick).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from mc_pql.log import CheckpointSigner
from mc_pql.log_store import LogStore, StoredCheckpoint

log = logging.getLogger("mc.pql.checkpoints")

MAX_PER_TICK = 5000
CHECKPOINT_EVENT_TYPE = "mc.receipts.checkpoint.v1"

Publish = Callable[[Sequence[StoredCheckpoint]], Awaitable[None]]


class CheckpointIssuer:
    """Signs, stores and publishes checkpoints of the tenants whose logs grew."""

    def __init__(
        self,
        signer: CheckpointSigner,
        store: LogStore,
        *,
        interval_s: float = 0.5,
        publish: Publish | None = None,
    ) -> None:
        self._signer = signer
        self._store = store
        self._interval = interval_s
        self._publish = publish
        self._pending: dict[str, tuple[int, bytes]] = {}
        self._issued: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()

    def observe(self, tenant: str, size: int, root: bytes) -> None:
        """Note a tenant's new head (called by the chain writer after each commit)."""
        seen = self._pending.get(tenant)
        if seen is None or size > seen[0]:
            self._pending[tenant] = (size, root)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pql-checkpoints")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()  # what was appended before stopping still gets its checkpoint

    async def _run(self) -> None:
        next_tick = time.monotonic()
        while True:
            next_tick += self._interval
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            try:
                await self.flush()
            except Exception:  # the next tick tries again; the heads stay pending
                log.exception("issuing checkpoints failed")
            next_tick = max(next_tick, time.monotonic())

    async def flush(self) -> list[StoredCheckpoint]:
        """Sign, store and publish the pending heads (at most `MAX_PER_TICK` tenants); returns
        once every flush started before it has finished too."""
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> list[StoredCheckpoint]:
        if not self._pending:
            return []
        tenants = list(self._pending)[:MAX_PER_TICK]
        heads = {t: self._pending.pop(t) for t in tenants}
        issued = [
            self._signer.sign(tenant, size, root)
            for tenant, (size, root) in heads.items()
            if size > self._issued.get(tenant, 0)
        ]
        try:
            stored = await self._store.insert_checkpoints(issued)
            if len(stored) < len(issued):
                refused = {(c.tenant, c.size) for c in issued} - {
                    (c.tenant, c.size) for c in stored
                }
                log.debug(  # normal for a size also issued on demand or by another replica
                    "checkpoints not stored (same size already, or a larger one)",
                    extra={"checkpoints": sorted(refused)[:20]},
                )
            if self._publish is not None and stored:
                await self._publish(stored)
        except BaseException:
            for tenant, head in heads.items():
                self.observe(tenant, *head)
            raise
        for checkpoint in issued:
            self._issued[checkpoint.tenant] = checkpoint.size
        if len(self._issued) > 100_000:
            self._issued.clear()
        return stored
