"""Reads of the per-tenant Merkle log (`receipt_log`) and its checkpoints (`log_checkpoints`).

Every read is bounded: proofs and roots read O(log n) rows by primary key, entries are read a
page at a time. See migrations/0005_receipt_log.sql for the layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from mc_common.receipts.merkle import HASH_SIZE, Node

CACHED_LEVEL = 6
MAX_CACHED_NODES = 200_000  # ~20 MB at most


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A checkpoint as stored: tenant, size, root and the signed note."""

    tenant: str
    size: int
    root: bytes
    note: str


@dataclass(frozen=True, slots=True)
class LogEntryRow:
    """One leaf: its index, the digest the log holds, and the receipt row's envelopes (None
    when the receipt row is missing)."""

    leaf_index: int
    digest: str
    envelope: bytes | None
    client_envelope: bytes | None


class NodeMissingError(LookupError):
    """A full node the log must hold is absent (its row was removed behind the service)."""


class LogStore:
    """Tenant-scoped reads and checkpoint writes of the receipt log."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool
        # Full nodes never change once their last leaf is written, and the upper ones are in
        # every proof: keep those covering >= 2^CACHED_LEVEL leaves (a few per 64 receipts).
        self._cache: dict[tuple[str, int, int], bytes] = {}

    async def size(self, tenant: str) -> int:
        """The number of leaves in the tenant's log (its last sequence number)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT sequence FROM receipt_log WHERE tenant = %s ORDER BY sequence DESC LIMIT 1",
                (tenant,),
            )
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    async def nodes(self, tenant: str, wanted: Iterable[Node]) -> dict[Node, bytes]:
        """The hashes of full nodes `wanted` (each stored in the row of its last leaf)."""
        cache = self._cache
        out: dict[Node, bytes] = {}
        missing: list[Node] = []
        for want in dict.fromkeys(wanted):
            hit = cache.get((tenant, *want))
            if hit is None:
                missing.append(want)
            else:
                out[want] = hit
        if not missing:
            return out
        sequences = sorted({(index + 1) << level for level, index in missing})
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT sequence, nodes FROM receipt_log "
                "WHERE tenant = %s AND sequence = ANY(%s::bigint[])",
                (tenant, sequences),
            )
            rows = {int(seq): bytes(nodes) for seq, nodes in await cur.fetchall()}
        for level, index in missing:
            sequence = (index + 1) << level
            node = rows.get(sequence, b"")[level * HASH_SIZE : (level + 1) * HASH_SIZE]
            if len(node) != HASH_SIZE:
                raise NodeMissingError(f"log row {sequence} of tenant {tenant!r} is missing")
            out[(level, index)] = node
            if level >= CACHED_LEVEL:
                if len(cache) >= MAX_CACHED_NODES:
                    cache.clear()
                cache[(tenant, level, index)] = node
        return out

    async def leaf_index(self, tenant: str, digest: str) -> int | None:
        """The leaf index of the receipt with `digest` (from the receipt row), if stored."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT sequence FROM receipts WHERE tenant = %s AND digest = %s",
                (tenant, digest),
            )
            row = await cur.fetchone()
        return None if row is None else int(row[0]) - 1

    async def stored_count(self, tenant: str, size: int) -> int:
        """How many receipt rows of `tenant` have a sequence <= `size` (an index-only count:
        cheap next to an audit, and it finds rows removed anywhere)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM receipts WHERE tenant = %s AND sequence <= %s",
                (tenant, size),
            )
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    async def locate(self, tenant: str, digest: str) -> tuple[int | None, int]:
        """The leaf index of the receipt with `digest` (None if not stored) and the log's size,
        in one round trip."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT (SELECT sequence FROM receipts WHERE tenant = %s AND digest = %s), "
                "(SELECT sequence FROM receipt_log WHERE tenant = %s "
                "ORDER BY sequence DESC LIMIT 1)",
                (tenant, digest, tenant),
            )
            row = await cur.fetchone()
        sequence, size = row if row is not None else (None, None)
        return (None if sequence is None else int(sequence) - 1), int(size or 0)

    async def entries(self, tenant: str, start: int, end: int) -> list[LogEntryRow]:
        """Leaves [start, end) that the log holds, in order, with their receipt rows if any."""
        if end <= start:
            return []
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT l.sequence, l.digest, r.envelope, r.client_envelope "
                "FROM receipt_log AS l LEFT JOIN receipts AS r "
                "ON r.tenant = l.tenant AND r.sequence = l.sequence "
                "WHERE l.tenant = %s AND l.sequence > %s AND l.sequence <= %s "
                "ORDER BY l.sequence",
                (tenant, start, end),
            )
            rows = await cur.fetchall()
        return [
            LogEntryRow(
                int(seq) - 1,
                str(digest),
                None if envelope is None else bytes(envelope),
                None if client is None else bytes(client),
            )
            for seq, digest, envelope, client in rows
        ]

    async def latest_checkpoint(self, tenant: str) -> StoredCheckpoint | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT size, root, note FROM log_checkpoints WHERE tenant = %s "
                "ORDER BY size DESC LIMIT 1",
                (tenant,),
            )
            row = await cur.fetchone()
        return None if row is None else StoredCheckpoint(tenant, int(row[0]), bytes(row[1]), row[2])

    async def checkpoint_at(self, tenant: str, size: int) -> StoredCheckpoint | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT root, note FROM log_checkpoints WHERE tenant = %s AND size = %s",
                (tenant, size),
            )
            row = await cur.fetchone()
        return None if row is None else StoredCheckpoint(tenant, size, bytes(row[0]), row[1])

    async def insert_checkpoints(
        self, checkpoints: Sequence[StoredCheckpoint]
    ) -> list[StoredCheckpoint]:
        """Store checkpoints and return those stored now. One already stored for a (tenant,
        size) is kept as it is, and one smaller than a stored one is never stored (a log that
        shrank behind the service is not signed as if it had not)."""
        if not checkpoints:
            return []
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO log_checkpoints (tenant, size, root, note) "
                "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bytea[], %s::text[]) "
                "AS c(tenant, size, root, note) WHERE NOT EXISTS (SELECT FROM log_checkpoints "
                "AS s WHERE s.tenant = c.tenant AND s.size > c.size) "
                "ON CONFLICT (tenant, size) DO NOTHING RETURNING tenant, size",
                (
                    [c.tenant for c in checkpoints],
                    [c.size for c in checkpoints],
                    [c.root for c in checkpoints],
                    [c.note for c in checkpoints],
                ),
            )
            stored = {(t, int(size)) for t, size in await cur.fetchall()}
        return [c for c in checkpoints if (c.tenant, c.size) in stored]
