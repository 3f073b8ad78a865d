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

from mc_pql.models import ReceiptRow

ChainHead = tuple[int, str] | None
"""(sequence, digest) of a tenant's last receipt; None for an empty chain."""

_HEADS = (
    "SELECT t.tenant, head.sequence, head.digest FROM unnest(%s::text[]) AS t(tenant) "
    "LEFT JOIN LATERAL (SELECT sequence, digest FROM receipts WHERE tenant = t.tenant "
    "ORDER BY sequence DESC LIMIT 1) AS head ON true"
)
_LOCK = "SELECT * FROM chain_lock(%b::text[], %b::bigint[], %b::text[])"
_ROWS = (
    "INSERT INTO receipts (tenant, sequence, digest, previous_digest, execution_id, envelope, "
    "signer_key_id, client_envelope, client_key_id, recorded_at) "
    "SELECT * FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], "
    "%b::bytea[], %b::text[], %b::bytea[], %b::text[], %b::timestamptz[])"
)
# One statement, in autocommit: `chain_lock` runs first (the insert waits on its result), so the
# locks are held from before the insert to the commit, and nothing is inserted if a head moved.
# The rows travel as one array per column, in binary (psycopg's text arrays quote every element
# in Python, which costs more than the rest of the append).
_APPEND = (
    f"WITH moved AS MATERIALIZED ({_LOCK}), appended AS ({_ROWS} "
    "WHERE NOT EXISTS (SELECT FROM moved)) SELECT * FROM moved"
)


class ChainAppender:
    """Reads and extends chains over one connection in autocommit mode (`appender()`)."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self._conn = conn

    async def heads(self, tenants: Sequence[str]) -> dict[str, ChainHead]:
        """The tenants' current heads, read without locks: a guess that `append` checks."""
        cur = await self._conn.execute(_HEADS, (list(tenants),))
        return _heads_of(await cur.fetchall())

    async def append(
        self, expected: Mapping[str, ChainHead], rows: Sequence[ReceiptRow]
    ) -> dict[str, ChainHead]:
        """Insert `rows` and commit if every tenant's head is still `expected[tenant]`.

        Otherwise nothing is inserted and the heads that moved are returned (empty on success).
        """
        if not rows:
            return {}
        _check_locked(expected, rows)
        cur = await self._conn.execute(_APPEND, [*_heads_params(expected), *_columns(rows)])
        return _heads_of(await cur.fetchall())

    async def append_locked(
        self,
        expected: Mapping[str, ChainHead],
        build: Callable[[Mapping[str, ChainHead]], Sequence[ReceiptRow]],
    ) -> Sequence[ReceiptRow]:
        """Lock the tenants, then insert and commit `build(heads)`, built from their heads.

        For tenants other writers keep appending to: `build` (the signing) runs once, under
        the locks, instead of again after every `append` that found a head moved. Returns the
        rows inserted.
        """
        async with self._conn.transaction(), self._conn.cursor() as cur:
            await cur.execute(_LOCK, _heads_params(expected))
            heads = {**expected, **_heads_of(await cur.fetchall())}
            rows = build(heads)
            if rows:
                _check_locked(expected, rows)
                await cur.execute(_ROWS, _columns(rows))
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
