"""Appending receipts to tenants' hash chains in Postgres, checked against the expected heads.

A writer signs receipts against the chain heads it expects, then `ChainAppender.append` takes
the tenants' advisory locks (held to commit, so replicas serialize per tenant), checks the heads
and inserts, or inserts nothing and returns the heads that moved (see
migrations/0002_chain_append.sql): one statement in autocommit, so one round trip and one commit.
`append_locked` is the pessimistic form, for tenants other writers are appending to: it signs
under the locks, from the heads read there.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from mc_common.receipts.merkle import HASH_SIZE, root_nodes
from mc_pql.models import ReceiptRow

ChainHead = tuple[int, str] | None
"""(sequence, digest) of a tenant's last receipt; None for an empty chain."""

# Heads are read from the log (receipt_log), which keeps a sequence number taken even if its
# receipt row vanished (migrations/0005_receipt_log.sql).
_HEADS = (
    "SELECT t.tenant, head.sequence, head.digest FROM unnest(%s::text[]) AS t(tenant) "
    "LEFT JOIN LATERAL (SELECT sequence, digest FROM receipt_log WHERE tenant = t.tenant "
    "ORDER BY sequence DESC LIMIT 1) AS head ON true"
)
_NODES = (
    "SELECT l.tenant, l.sequence, l.nodes FROM unnest(%s::text[], %s::bigint[]) "
    "AS want(tenant, sequence) JOIN receipt_log AS l USING (tenant, sequence)"
)
_LOCK = "SELECT * FROM chain_lock(%b::text[], %b::bigint[], %b::text[])"
_RECEIPTS = (
    "INSERT INTO receipts (tenant, sequence, digest, previous_digest, execution_id, envelope, "
    "signer_key_id, client_envelope, client_key_id, recorded_at, idempotency_key, "
    "request_sha256, request_count) "
    "SELECT * FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], "
    "%b::bytea[], %b::text[], %b::bytea[], %b::text[], %b::timestamptz[], %b::text[], "
    "%b::text[], %b::int4[])"
)
_LOG = (
    "INSERT INTO receipt_log (tenant, sequence, digest, nodes) "
    "SELECT * FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::bytea[])"
)
_ROWS = f"WITH logged AS ({_LOG}) {_RECEIPTS}"
# One statement, in autocommit: `chain_lock` runs first (the insert waits on its result), so the
# locks are held from before the insert to the commit, and nothing is inserted if a head moved.
# The rows travel as one array per column, in binary (psycopg's text arrays quote every element
# in Python, which costs more than the rest of the append).
_APPEND = (
    f"WITH moved AS MATERIALIZED ({_LOCK}), "
    f"logged AS ({_LOG} WHERE NOT EXISTS (SELECT FROM moved)), "
    f"appended AS ({_RECEIPTS} WHERE NOT EXISTS (SELECT FROM moved)) SELECT * FROM moved"
)


class ChainAppender:
    """Reads and extends chains over one connection in autocommit mode (`appender()`)."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self._conn = conn

    async def heads(self, tenants: Sequence[str]) -> dict[str, ChainHead]:
        """The tenants' current heads, read without locks: a guess that `append` checks."""
        cur = await self._conn.execute(_HEADS, (list(tenants),))
        return _heads_of(await cur.fetchall())

    async def frontiers(self, heads: Mapping[str, ChainHead]) -> dict[str, list[bytes]]:
        """The compact ranges (Merkle frontier, largest subtree first) of the tenants' logs at
        `heads`: what appending the next leaf needs (O(log n) rows each)."""
        return await read_frontiers(self._conn, heads)

    async def append(
        self, expected: Mapping[str, ChainHead], rows: Sequence[ReceiptRow]
    ) -> dict[str, ChainHead]:
        """Insert `rows` and commit if every tenant's head is still `expected[tenant]`.

        Otherwise nothing is inserted and the heads that moved are returned (empty on success).
        """
        if not rows:
            return {}
        _check_locked(expected, rows)
        cur = await self._conn.execute(
            _APPEND, [*_heads_params(expected), *_log_columns(rows), *_columns(rows)]
        )
        return _heads_of(await cur.fetchall())

    async def append_locked(
        self,
        expected: Mapping[str, ChainHead],
        build: Callable[[Mapping[str, ChainHead], Mapping[str, list[bytes]]], Sequence[ReceiptRow]],
        known: Callable[[str, ChainHead], bool],
    ) -> Sequence[ReceiptRow]:
        """Lock the tenants, then insert and commit `build(heads, frontiers)`, built from their
        heads (and the Merkle frontiers at those heads the caller does not hold: `known`).

        For tenants other writers keep appending to: `build` (the signing) runs once, under
        the locks, instead of again after every `append` that found a head moved. Returns the
        rows inserted.
        """
        async with self._conn.transaction(), self._conn.cursor() as cur:
            await cur.execute(_LOCK, _heads_params(expected))
            heads = {**expected, **_heads_of(await cur.fetchall())}
            unknown = {t: h for t, h in heads.items() if not known(t, h)}
            frontiers = await read_frontiers(self._conn, unknown) if unknown else {}
            rows = build(heads, frontiers)
            if rows:
                _check_locked(expected, rows)
                await cur.execute(_ROWS, [*_log_columns(rows), *_columns(rows)])
        return rows


def _heads_params(expected: Mapping[str, ChainHead]) -> list[object]:
    """The tenants, in sorted order so concurrent writers never deadlock, and their heads."""
    tenants = sorted(expected)
    heads = [expected[t] for t in tenants]
    return [
        tenants,
        [None if h is None else h[0] for h in heads],
        [None if h is None else h[1] for h in heads],
    ]


def _columns(rows: Sequence[ReceiptRow]) -> list[object]:
    return [list(column) for column in zip(*map(_values, rows), strict=True)]


def _log_columns(rows: Sequence[ReceiptRow]) -> list[object]:
    return [
        [r.tenant for r in rows],
        [r.sequence for r in rows],
        [r.digest for r in rows],
        [r.log_nodes for r in rows],
    ]


class LogCorruptedError(RuntimeError):
    """A tenant's log lacks a node it must have (rows were removed behind the service)."""


async def read_frontiers(
    conn: AsyncConnection[Any], heads: Mapping[str, ChainHead]
) -> dict[str, list[bytes]]:
    """The Merkle frontiers of the tenants' logs at `heads` (see `ChainAppender.frontiers`)."""
    wanted: list[tuple[str, int, int]] = []  # tenant, sequence holding the node, level
    for tenant, head in heads.items():
        size = 0 if head is None else head[0]
        for level, index in root_nodes(size):
            wanted.append((tenant, (index + 1) << level, level))
    found: dict[tuple[str, int], bytes] = {}
    if wanted:
        cur = await conn.execute(_NODES, ([w[0] for w in wanted], [w[1] for w in wanted]))
        found = {(t, int(seq)): bytes(nodes) for t, seq, nodes in await cur.fetchall()}
    out: dict[str, list[bytes]] = {tenant: [] for tenant in heads}
    for tenant, sequence, level in wanted:
        nodes = found.get((tenant, sequence), b"")
        node = nodes[level * HASH_SIZE : (level + 1) * HASH_SIZE]
        if len(node) != HASH_SIZE:
            raise LogCorruptedError(f"the log of tenant {tenant!r} lacks its row {sequence}")
        out[tenant].append(node)
    return out


def _check_locked(expected: Mapping[str, ChainHead], rows: Sequence[ReceiptRow]) -> None:
    if not {r.tenant for r in rows} <= expected.keys():
        raise ValueError("every row's tenant must be locked: give its expected head")


def _heads_of(rows: list[tuple[Any, ...]]) -> dict[str, ChainHead]:
    return {t: None if seq is None else (int(seq), str(dig)) for t, seq, dig in rows}


def _values(r: ReceiptRow) -> tuple[object, ...]:
    return (
        r.tenant,
        r.sequence,
        r.digest,
        r.previous_digest,
        r.execution_id,
        r.envelope,
        r.signer_key_id,
        r.client_envelope,
        r.client_key_id,
        r.recorded_at,
        r.idempotency_key,
        r.request_sha256,
        r.request_count,
    )


@contextlib.asynccontextmanager
async def appender(pool: AsyncConnectionPool[Any]) -> AsyncIterator[ChainAppender]:
    """Hold a pool connection in autocommit mode for a chain writer's consecutive appends."""
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        try:
            yield ChainAppender(conn)
        finally:
            await _restore(conn)


async def _restore(conn: AsyncConnection[Any]) -> None:
    """Give the connection back as the pool lent it (autocommit off), or close it."""
    try:
        if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            await conn.rollback()
        if conn.info.transaction_status == TransactionStatus.IDLE:
            await conn.set_autocommit(False)
            return
    except psycopg.Error:
        pass
    await conn.close()  # broken or busy: the pool replaces it
