"""The chain writer of a process: signs queued receipts and appends them, one commit per round.

Callers queue their receipts and wait; a single task drains the queue in rounds, each round one
commit that takes every waiting caller's receipts, for every tenant (group commit), so
throughput does not collapse to one commit per call. Receipts are signed against the heads the
writer's previous append left (read once per tenant otherwise); the append checks those heads
under the tenants' locks, so signing happens outside the locks and the lock, check and insert
cost one round trip (see `mc_pql.chain_store`). When another replica moved a head, the round is
signed again under the locks, and so are that tenant's rounds for a while (`CONTENDED_S`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic_core import to_json

from mc_common.receipts import ChainLink, ReceiptBody, Subject, build_receipt, sign_receipt
from mc_common.signing import Signer
from mc_pql.chain_store import ChainAppender, ChainHead
from mc_pql.models import ReceiptRow, StoredReceipt, Verification
from mc_pql.store import ProvenanceStore

MAX_CACHED_HEADS = 100_000  # tenants whose head is remembered; the rest are read when needed
# After another writer moved a tenant's head, appends to it sign under its lock for this long:
# speculative signing would mostly be wasted while replicas take turns on the tenant.
CONTENDED_S = 1.0


@dataclass(frozen=True, slots=True)
class PreparedReceipt:
    """A verified submission ready to chain: its body, subjects and client attestation."""

    body: ReceiptBody
    subjects: list[Subject] | None
    client_envelope: bytes | None = None
    client_key_id: str | None = None


@dataclass(slots=True)
class _Pending:
    """One caller's receipts waiting for the writer."""

    tenant: str
    items: list[PreparedReceipt]
    done: asyncio.Future[list[StoredReceipt]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    signed: list[StoredReceipt] = field(default_factory=list)


class ChainWriter:
    """Appends receipts to tenants' chains in order, group-committing concurrent callers."""

    def __init__(self, store: ProvenanceStore, signer: Signer, *, max_batch: int = 256) -> None:
        self._store = store
        self._signer = signer
        self._max_batch = max_batch
        self._queue: deque[_Pending] = deque()
        self._task: asyncio.Task[None] | None = None
        self._heads: dict[str, ChainHead] = {}  # as this writer's last append left them
        self._contended: dict[str, float] = {}  # tenant -> until when it is appended locked

    async def append(self, tenant: str, items: list[PreparedReceipt]) -> list[StoredReceipt]:
        """Sign and append `items` to `tenant`'s chain, in order; returns them once committed."""
        pending = _Pending(tenant, items)
        self._queue.append(pending)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="pql-chain-writer")
        return await pending.done

    async def _drain(self) -> None:
        # One connection serves consecutive rounds; after a failed round the next one starts
        # on a fresh connection from the pool, in case the failure broke this one.
        while self._queue:
            async with self._store.chain_appender() as appender:
                while self._queue and await self._round(appender):
                    pass

    async def _round(self, appender: ChainAppender) -> bool:
        """Append one round of queued receipts; False when it failed (its callers are told)."""
        group: dict[str, list[_Pending]] = {}
        count = 0
        queue = self._queue
        while queue and (not group or count + len(queue[0].items) <= self._max_batch):
            pending = queue.popleft()
            group.setdefault(pending.tenant, []).append(pending)
            count += len(pending.items)
        try:
            await self._append(appender, group)
        except Exception as exc:  # every caller of the round sees the failure
            for tenant, pendings in group.items():
                self._heads.pop(tenant, None)  # the append may or may not have committed
                for pending in pendings:
                    if not pending.done.done():
                        pending.done.set_exception(exc)
            return False
        for pendings in group.values():
            for pending in pendings:
                if not pending.done.done():  # a caller may have been cancelled meanwhile
                    pending.done.set_result(pending.signed)
        return True

    async def _append(self, appender: ChainAppender, group: dict[str, list[_Pending]]) -> None:
        heads = self._heads
        unknown = [tenant for tenant in group if tenant not in heads]
        if unknown:
            if len(heads) + len(unknown) > MAX_CACHED_HEADS:
                heads.clear()
                unknown = list(group)
            heads.update(await appender.heads(unknown))
        recorded = datetime.now(UTC)
        expected = {tenant: heads[tenant] for tenant in group}
        now = time.monotonic()
        rows: Sequence[ReceiptRow] | None = None
        if all(self._contended.get(tenant, 0.0) < now for tenant in group):
            rows = self._sign_all(group, expected, recorded)
            moved = await appender.append(expected, rows)
            if moved:  # another writer appended meanwhile
                self._contend(moved, now)
                expected.update(moved)
                rows = None
        if rows is None:
            rows = await appender.append_locked(
                expected, functools.partial(self._sign_locked, group, expected, recorded, now)
            )
        for row in rows:
            heads[row.tenant] = (row.sequence, row.digest)

    def _sign_locked(
        self,
        group: dict[str, list[_Pending]],
        expected: Mapping[str, ChainHead],
        at: datetime,
        now: float,
        heads: Mapping[str, ChainHead],
    ) -> list[ReceiptRow]:
        self._contend((t for t in group if heads[t] != expected[t]), now)
        return self._sign_all(group, heads, at)

    def _contend(self, tenants: Iterable[str], now: float) -> None:
        """Append to `tenants` under their locks for a while: other writers append to them."""
        for tenant in tenants:
            self._contended[tenant] = now + CONTENDED_S
        if len(self._contended) > MAX_CACHED_HEADS:
            self._contended = {t: u for t, u in self._contended.items() if u > now}

    def _sign_all(
        self, group: dict[str, list[_Pending]], heads: Mapping[str, ChainHead], at: datetime
    ) -> list[ReceiptRow]:
        return [
            row
            for tenant, pendings in group.items()
            for row in self._sign(tenant, heads[tenant], pendings, at)
        ]

    def _sign(
        self, tenant: str, head: ChainHead, group: list[_Pending], recorded: datetime
    ) -> list[ReceiptRow]:
        previous = None if head is None else ChainLink(tenant, head[0], head[1])
        key_id = self._signer.key_id
        rows = []
        for pending in group:
            pending.signed = []  # signing again starts over
            for item in pending.items:
                statement = build_receipt(item.body, previous, subjects=item.subjects)
                signed = sign_receipt(statement, self._signer)
                row = ReceiptRow(
                    tenant=tenant,
                    sequence=signed.link.sequence,
                    digest=signed.link.digest,
                    previous_digest=statement.predicate.previous_digest,
                    execution_id=item.body.execution_id,
                    # The bytes of `Envelope.to_json()`, by a JSON writer that costs half as much.
                    envelope=to_json(signed.envelope.to_dict()),
                    signer_key_id=key_id,
                    client_envelope=item.client_envelope,
                    client_key_id=item.client_key_id,
                    recorded_at=recorded,
                )
                rows.append(row)
                pending.signed.append(StoredReceipt(row, statement, Verification()))
                previous = signed.link
        return rows
