"""A short-lived cache of API key rows, emptied by Postgres notifications.

Every key write NOTIFYs the key id on the store's channel; each gateway replica LISTENs and
drops that entry at once, so a revocation reaches all replicas in well under a second. Entries
also expire after `ttl_s` (at most 5 s: a lookup that raced a revocation is stale no longer than
that); while the notification connection is down nothing is cached, and the cache is emptied
on every reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from psycopg import AsyncConnection, sql

from mc_gateway.apikeys import ApiKeyRecord, ApiKeyStore

log = logging.getLogger("mc.gateway.keys")
RECONNECT_DELAY_S = 1.0


@dataclass(slots=True)
class _Entry:
    record: ApiKeyRecord | None
    fetched_at: float


class KeyCache:
    """Key lookups by id, cached for at most `ttl_s` and invalidated by NOTIFY."""

    def __init__(self, store: ApiKeyStore, dsn: str, ttl_s: float) -> None:
        self._store = store
        self._dsn = dsn
        self._ttl = ttl_s
        self._entries: dict[str, _Entry] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        entry = self._entries.get(key_id)
        now = time.monotonic()
        if entry is not None and now - entry.fetched_at < self._ttl:
            return entry.record
        record = await self._store.lookup(key_id)
        if self.listening.is_set():  # without the listener only the TTL protects the cache
            self._entries[key_id] = _Entry(record, now)
        return record

    def invalidate(self, key_id: str | None = None) -> None:
        if key_id is None:
            self._entries.clear()
        else:
            self._entries.pop(key_id, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="gateway-key-notify")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("key notification connection lost; reconnecting", exc_info=True)
            self.listening.clear()
            self.invalidate()
            await asyncio.sleep(RECONNECT_DELAY_S)

    async def _listen(self) -> None:
        async with await AsyncConnection.connect(self._dsn, autocommit=True) as conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._store.channel)))
            self.invalidate()  # whatever changed while not listening
            self.listening.set()
            async for note in conn.notifies():
                self.invalidate(note.payload)
