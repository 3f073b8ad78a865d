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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from pydantic_core import to_json

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import FieldViolation, InvalidArgument
from mc_common.receipts import ChainLink, ReceiptBody, Subject, build_receipt, sign_receipt
from mc_common.receipts.merkle import completed_nodes, extend_frontier, fold, leaf_hash
from mc_common.signing import Signer
from mc_pql.chain_store import ChainAppender, ChainHead
from mc_pql.limits import MAX_RECEIPT_REPLY_BYTES, MAX_REPLY_BYTES, receipt_reply_bytes
from mc_pql.models import ReceiptRow, RequestKey, StoredReceipt, Verification
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
    key: RequestKey | None
    done: asyncio.Future[list[StoredReceipt]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    signed: list[StoredReceipt] = field(default_factory=list)
    refused: InvalidArgument | None = None  # set when signing found the reply too large


LogHeadListener = Callable[[str, int, bytes], None]
"""Told (tenant, tree size, root hash) after each committed append (see `mc_pql.checkpoints`)."""


class ChainWriter:
    """Appends receipts to tenants' chains in order, group-committing concurrent callers.

    Each receipt also becomes the next leaf of its tenant's Merkle log: the writer keeps each
    tenant's frontier (compact range) beside its head and stores, with the receipt and in the
    same statement, the leaf hash and the full subtrees it completes.
    """

    def __init__(
        self,
        store: ProvenanceStore,
        signer: Signer,
        *,
        max_batch: int = 256,
        on_appended: LogHeadListener | None = None,
    ) -> None:
        self._store = store
        self._signer = signer
        self._max_batch = max_batch
        self._on_appended = on_appended
        self._queue: deque[_Pending] = deque()
        self._task: asyncio.Task[None] | None = None
        self._heads: dict[str, ChainHead] = {}  # as this writer's last append left them
        self._frontiers: dict[str, list[bytes]] = {}  # each tenant's log frontier at its head
        self._signed_frontiers: dict[str, list[bytes]] = {}  # after the rows being appended
        self._contended: dict[str, float] = {}  # tenant -> until when it is appended locked

    async def append(
        self, tenant: str, items: list[PreparedReceipt], key: RequestKey | None = None
    ) -> list[StoredReceipt]:
        """Sign and append `items` to `tenant`'s chain, in order; returns them once committed.

        `key` is recorded on the first receipt, in the same statement (see `RequestKey`)."""
        pending = _Pending(tenant, items, key)
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
        except Exception as exc:
            for tenant in group:
                self._heads.pop(tenant, None)  # the append may or may not have committed
                self._frontiers.pop(tenant, None)
            if _refused_rows(exc) and sum(len(p) for p in group.values()) > 1:
                return await self._isolate(appender, group)
            for pendings in group.values():  # every caller of the round sees the failure
                for pending in pendings:
                    _fail(pending, exc)
            return False
        for pendings in group.values():
            for pending in pendings:
                _settle(pending)
        return True

    async def _isolate(self, appender: ChainAppender, group: dict[str, list[_Pending]]) -> bool:
        """Append each caller of a round the database refused on its own, so one caller's
        bad row fails only that caller, never another tenant's (or caller's) writes.

        Only for refused rows (data or constraint errors): the statement, or the transaction,
        failed as a whole, so nothing of the round was committed and retrying cannot append
        twice. False when a caller failed otherwise (the connection may be broken)."""
        healthy = True
        for tenant, pendings in group.items():
            for pending in pendings:
                if pending.done.done() or not healthy:
                    _fail(pending, ConnectionError("the chain writer's connection failed"))
                    continue
                try:
                    await self._append(appender, {tenant: [pending]})
                except Exception as exc:
                    self._heads.pop(tenant, None)
                    self._frontiers.pop(tenant, None)
                    healthy = _refused_rows(exc)
                    _fail(pending, exc)
                else:
                    _settle(pending)
        return healthy

    async def _append(self, appender: ChainAppender, group: dict[str, list[_Pending]]) -> None:
        heads, frontiers = self._heads, self._frontiers
        unknown = [tenant for tenant in group if tenant not in heads or tenant not in frontiers]
        if unknown:
            if len(heads) + len(unknown) > MAX_CACHED_HEADS:
                heads.clear()
                frontiers.clear()
                unknown = list(group)
            read = await appender.heads(unknown)
            frontiers.update(await appender.frontiers(read))
            heads.update(read)
        recorded = datetime.now(UTC)
        expected = {tenant: heads[tenant] for tenant in group}
        now = time.monotonic()
        rows: Sequence[ReceiptRow] | None = None
        if all(self._contended.get(tenant, 0.0) < now for tenant in group):
            rows = self._sign_all(group, expected, frontiers, recorded)
            moved = await appender.append(expected, rows)
            if moved:  # another writer appended meanwhile
                self._contend(moved, now)
                expected.update(moved)
                rows = None
        if rows is None:
            rows = await appender.append_locked(
                expected,
                functools.partial(self._sign_locked, group, expected, recorded, now),
                lambda tenant, head: heads.get(tenant) == head and tenant in frontiers,
            )
        for row in rows:
            heads[row.tenant] = (row.sequence, row.digest)
        for tenant in group:
            frontier = self._signed_frontiers.pop(tenant)
            frontiers[tenant] = frontier
            head = heads[tenant]
            if self._on_appended is not None and head is not None:
                self._on_appended(tenant, head[0], fold(frontier))

    def _sign_locked(
        self,
        group: dict[str, list[_Pending]],
        expected: Mapping[str, ChainHead],
        at: datetime,
        now: float,
        heads: Mapping[str, ChainHead],
        read_frontiers: Mapping[str, list[bytes]],
    ) -> list[ReceiptRow]:
        self._contend((t for t in group if heads[t] != expected[t]), now)
        return self._sign_all(group, heads, {**self._frontiers, **read_frontiers}, at)

    def _contend(self, tenants: Iterable[str], now: float) -> None:
        """Append to `tenants` under their locks for a while: other writers append to them."""
        for tenant in tenants:
            self._contended[tenant] = now + CONTENDED_S
        if len(self._contended) > MAX_CACHED_HEADS:
            self._contended = {t: u for t, u in self._contended.items() if u > now}

    def _sign_all(
        self,
        group: dict[str, list[_Pending]],
        heads: Mapping[str, ChainHead],
        frontiers: Mapping[str, list[bytes]],
        at: datetime,
    ) -> list[ReceiptRow]:
        return [
            row
            for tenant, pendings in group.items()
            for row in self._sign(tenant, heads[tenant], frontiers[tenant], pendings, at)
        ]

    def _sign(
        self,
        tenant: str,
        head: ChainHead,
        frontier: list[bytes],
        group: list[_Pending],
        recorded: datetime,
    ) -> list[ReceiptRow]:
        previous = None if head is None else ChainLink(tenant, head[0], head[1])
        key_id = self._signer.key_id
        rows: list[ReceiptRow] = []
        for pending in group:
            pending.signed = []  # signing again starts over
            pending.refused = None
            start, first_row, start_frontier = previous, len(rows), frontier
            for position, item in enumerate(pending.items):
                key = pending.key if position == 0 else None  # on the request's first receipt
                statement = build_receipt(item.body, previous, subjects=item.subjects)
                signed = sign_receipt(statement, self._signer)
                index = signed.link.sequence - 1
                leaf = leaf_hash(bytes.fromhex(signed.link.digest))
                nodes = completed_nodes(index, leaf, frontier)
                frontier = extend_frontier(index, frontier, leaf)
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
                    log_nodes=b"".join(nodes),
                    idempotency_key=None if key is None else key.key,
                    request_sha256=None if key is None else key.request_sha256,
                    request_count=None if key is None else len(pending.items),
                )
                rows.append(row)
                pending.signed.append(StoredReceipt(row, statement, Verification()))
                previous = signed.link
            pending.refused = _too_large(rows[first_row:])
            if pending.refused is not None:  # never stored: the reply could not be sent
                del rows[first_row:]
                pending.signed = []
                previous, frontier = start, start_frontier
        self._signed_frontiers[tenant] = frontier
        return rows


def _too_large(rows: Sequence[ReceiptRow]) -> InvalidArgument | None:
    """Refuse receipts whose reply could not be sent (ADR 0033), naming the first too large."""
    total = 0
    for index, row in enumerate(rows):
        size = receipt_reply_bytes(len(row.envelope), len(row.client_envelope or b""))
        total += size
        if size > MAX_RECEIPT_REPLY_BYTES:
            where = f"receipts[{index}]" if len(rows) > 1 else "receipt"
            return _too_large_error(
                where,
                f"the signed receipt would take {size} bytes to serve; the most is "
                f"{MAX_RECEIPT_REPLY_BYTES}",
            )
    if total > MAX_REPLY_BYTES:
        return _too_large_error(
            "receipts",
            f"the batch's reply would take {total} bytes; the most is {MAX_REPLY_BYTES}: "
            "send it in smaller batches",
        )
    return None


def _too_large_error(field: str, description: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field}: {description}",
        [FieldViolation(field, description)],
        reason=ErrorReason.ERROR_REASON_RECEIPT_TOO_LARGE,
    )


def _settle(pending: _Pending) -> None:
    if pending.done.done():  # a caller may have been cancelled meanwhile
        return
    if pending.refused is not None:
        pending.done.set_exception(pending.refused)
    else:
        pending.done.set_result(pending.signed)


def _refused_rows(error: BaseException) -> bool:
    """Postgres refused the rows themselves (SQLSTATE classes 22 and 23), not the connection."""
    return isinstance(error, psycopg.errors.DataError | psycopg.errors.IntegrityError)


def _fail(pending: _Pending, error: BaseException) -> None:
    if pending.done.done():  # the caller was cancelled meanwhile
        return
    if isinstance(error, psycopg.errors.DataError):
        error = InvalidArgument(f"the receipt cannot be stored: {error.diag.message_primary}")
    pending.done.set_exception(error)
