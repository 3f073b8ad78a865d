"""Idempotent consumers: apply an event's side effects at most once, keyed by event id.

The event id is recorded in `processed_events` in the *same* Postgres transaction as the
handler's writes, so either both commit or neither does. A redelivered event finds its id
already recorded and changes nothing; a handler that fails rolls the record back too, so the
retry runs it again. Concurrent deliveries of one event serialise on the primary key: the
second waits for the first to commit, then sees `first_time = False`. The event's body digest
is recorded too: an id seen again with another body raises `EventConflict` (dead-lettered with
reason CONFLICT) instead of being silently ignored.

The table lives in the service's schema (the connection's `search_path`); services create it
with a migration (`PROCESSED_EVENTS_DDL`), never at start-up, where replicas would race, and
purge it on a schedule (`ProcessedEvents.purge_older_than`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from mc_common.events.failures import EventConflict

PROCESSED_EVENTS_DDL = """\
CREATE TABLE IF NOT EXISTS processed_events (
    consumer text NOT NULL,
    event_id text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    body_sha256 text,
    PRIMARY KEY (consumer, event_id)
);
ALTER TABLE processed_events ADD COLUMN IF NOT EXISTS body_sha256 text;
CREATE INDEX IF NOT EXISTS processed_events_age ON processed_events (consumer, processed_at)"""
"""DDL of the dedup table; also usable verbatim as (part of) a service migration."""

T = TypeVar("T")


async def ensure_processed_events_table(conn: AsyncConnection[Any]) -> None:
    """Create `processed_events` in the first schema of the connection's search_path."""
    async with conn.transaction():
        await conn.execute(PROCESSED_EVENTS_DDL)


@asynccontextmanager
async def idempotent(
    conn: AsyncConnection[Any], consumer: str, event_id: str, body_sha256: str | None = None
) -> AsyncIterator[bool]:
    """Open a transaction that records `(consumer, event_id)`; yield whether it is new.

    Do the side effects on `conn` inside the block, and only when the yielded value is
    true. With `body_sha256`, an id already recorded with another body raises
    `EventConflict`. An exception in the block rolls back both the side effects and the
    record::

        async with pool.connection() as conn, idempotent(conn, "billing", event.id) as first:
            if first:
                await conn.execute("INSERT INTO usage ...")
    """
    if not consumer or not event_id:
        raise ValueError("consumer and event_id must not be empty")
    async with conn.transaction():
        cursor = await conn.execute(
            "INSERT INTO processed_events (consumer, event_id, body_sha256) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING RETURNING 1",
            (consumer, event_id, body_sha256),
        )
        first = await cursor.fetchone() is not None
        if not first and body_sha256 is not None:
            cursor = await conn.execute(
                "SELECT body_sha256 FROM processed_events WHERE consumer = %s AND event_id = %s",
                (consumer, event_id),
            )
            row = await cursor.fetchone()
            stored = None if row is None else row[0]
            if stored is not None and stored != body_sha256:
                raise EventConflict(
                    f"event {event_id!r} was already processed with a different body"
                )
        yield first


async def run_once(
    pool: AsyncConnectionPool[Any],
    consumer: str,
    event_id: str,
    fn: Callable[[AsyncConnection[Any]], Awaitable[object]],
    *,
    body_sha256: str | None = None,
) -> bool:
    """Run `fn(conn)` and record `event_id` in one transaction, unless already recorded.

    Returns:
        True if `fn` ran (first delivery), False if the event was processed before.
    """
    async with (
        pool.connection() as conn,
        idempotent(conn, consumer, event_id, body_sha256) as first_time,
    ):
        if first_time:
            await fn(conn)
        return first_time


class ProcessedEvents:
    """The dedup store of one consumer (usually the consumer group name) over a pool."""

    def __init__(self, pool: AsyncConnectionPool[Any], consumer: str) -> None:
        if not consumer:
            raise ValueError("consumer must not be empty")
        self._pool = pool
        self.consumer = consumer

    async def ensure_schema(self) -> None:
        """Create the `processed_events` table if missing."""
        async with self._pool.connection() as conn:
            await ensure_processed_events_table(conn)

    async def run_once(
        self,
        event_id: str,
        fn: Callable[[AsyncConnection[Any]], Awaitable[object]],
        *,
        body_sha256: str | None = None,
    ) -> bool:
        """See the module function `run_once`."""
        return await run_once(self._pool, self.consumer, event_id, fn, body_sha256=body_sha256)

    async def seen(self, event_id: str) -> bool:
        """Whether `event_id` was processed (committed) by this consumer."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT 1 FROM processed_events WHERE consumer = %s AND event_id = %s",
                (self.consumer, event_id),
            )
            return await cursor.fetchone() is not None

    async def purge_older_than(self, age: timedelta) -> int:
        """Forget ids processed more than `age` ago; return how many were deleted.

        NOTE: keep `age` well above the longest possible redelivery delay (topic retention),
        or a very late duplicate would be applied again.
        """
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM processed_events WHERE consumer = %s AND processed_at < now() - %s",
                (self.consumer, age),
            )
            deleted: int = cursor.rowcount
            return deleted
