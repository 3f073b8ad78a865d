"""API keys: their format, how they are hashed, and their Postgres store.

A key reads `mck_<key_id>_<secret>`: `mck_` makes leaked keys easy to find (secret scanners),
`key_id` (16 of [a-z0-9]) finds the row, and the secret carries 256 random bits. Only
HMAC-SHA256(pepper, key) -- SHA-256 when no pepper is configured -- is stored: with that much
entropy a slow password hash buys nothing. Every write sends a NOTIFY with the key id, so that
gateway replicas drop their cached copy at once (see `keycache`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from psycopg import AsyncConnection

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.db import Pool
from mc_common.errors import FailedPrecondition, InvalidArgument, NotFound, PreconditionViolation
from mc_common.tenancy import OPERATOR_KIND, Principal

PREFIX = "mck_"
KEY_ID_LENGTH = 16
_KEY_ID_ALPHABET = string.ascii_lowercase + string.digits
_KEY = re.compile(r"mck_([a-z0-9]{16})_([A-Za-z0-9_-]{43})")
DEFAULT_OVERLAP = timedelta(days=1)
NOTIFY_CHANNEL = "mc_gateway_api_keys"

_COLUMNS = (
    "key_id, tenant, principal, display_name, secret_hash, created_at, expire_at, revoked_at, "
    "successor_key_id"
)


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """One stored key (never its secret)."""

    key_id: str
    tenant: str
    principal: str
    display_name: str
    secret_hash: bytes
    created_at: datetime
    expire_at: datetime | None
    revoked_at: datetime | None
    successor_key_id: str | None

    def usable_at(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expire_at is None or now < self.expire_at)


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key as created: its record and the secret shown once."""

    record: ApiKeyRecord
    secret: str


def parse_key(raw: str) -> str | None:
    """The key id of a well-formed key, else None."""
    found = _KEY.fullmatch(raw)
    return found.group(1) if found else None


def looks_like_key(raw: str) -> bool:
    return raw.startswith(PREFIX)


class KeyHasher:
    """Hashes keys for storage and checks a presented key against a stored hash."""

    def __init__(self, pepper: str | None = None) -> None:
        self._pepper = pepper.encode() if pepper else None

    def hash(self, key: str) -> bytes:
        if self._pepper is None:
            return hashlib.sha256(key.encode()).digest()
        return hmac.new(self._pepper, key.encode(), hashlib.sha256).digest()

    def matches(self, key: str, stored: bytes) -> bool:
        return hmac.compare_digest(self.hash(key), stored)


def new_secret() -> tuple[str, str]:
    """A fresh (key id, full key)."""
    key_id = "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


class ApiKeyStore:
    """The `api_keys` table. Every method is one transaction; writes notify the replicas."""

    def __init__(self, pool: Pool, hasher: KeyHasher, schema: str) -> None:
        self._pool = pool
        self._hasher = hasher
        self.channel = f"{NOTIFY_CHANNEL}_{schema}"

    async def lookup(self, key_id: str) -> ApiKeyRecord | None:
        """The key with this id, in any tenant (authentication looks keys up by id)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = %s", [key_id])
            row = await cur.fetchone()
        return _record(row) if row else None

    async def create(self, tenant: str, principal: str, display_name: str) -> NewKey:
        parsed = Principal.parse(principal)
        if parsed.kind == OPERATOR_KIND:
            raise InvalidArgument.field(
                "principal", "API keys cannot act as operators; operators sign in with OIDC"
            )
        async with self._pool.connection() as conn, conn.transaction():
            return await self._insert(conn, tenant, principal, display_name)

    async def list(
        self, tenant: str, page_size: int, page_token: str
    ) -> tuple[list[ApiKeyRecord], str]:
        size = page_size or 50
        after = _decode_token(page_token) if page_token else None
        query = f"SELECT {_COLUMNS} FROM api_keys WHERE tenant = %s"
        params: list[object] = [tenant]
        if after is not None:
            query += " AND (created_at, key_id) < (%s, %s)"
            params.extend(after)
        query += " ORDER BY created_at DESC, key_id DESC LIMIT %s"
        params.append(size + 1)
        async with self._pool.connection() as conn:
            cur = await conn.execute(query, params)
            rows = [_record(r) for r in await cur.fetchall()]
        page = rows[:size]
        token = _encode_token(page[-1]) if len(rows) > size else ""
        return page, token

    async def rotate(
        self, tenant: str, key_id: str, overlap: timedelta
    ) -> tuple[NewKey, ApiKeyRecord]:
        """A successor of the key; the old one keeps working for `overlap`."""
        async with self._pool.connection() as conn, conn.transaction():
            old = await self._locked(conn, tenant, key_id)
            now = datetime.now(UTC)
            if not old.usable_at(now) or old.successor_key_id:
                raise FailedPrecondition(
                    "only an active key that was not rotated yet can be rotated",
                    [PreconditionViolation("KEY_STATE", f"tenants/{tenant}/keys/{key_id}", "")],
                    reason=ErrorReason.ERROR_REASON_API_KEY_NOT_ROTATABLE,
                )
            new = await self._insert(conn, tenant, old.principal, old.display_name)
            cur = await conn.execute(
                f"UPDATE api_keys SET expire_at = %s, successor_key_id = %s WHERE key_id = %s "
                f"RETURNING {_COLUMNS}",
                [now + overlap, new.record.key_id, key_id],
            )
            row = await cur.fetchone()
            assert row is not None
            await self._notify(conn, key_id)
        return new, _record(row)

    async def revoke(self, tenant: str, key_id: str) -> ApiKeyRecord:
        """Revoke the key now (revoking twice keeps the first time)."""
        async with self._pool.connection() as conn, conn.transaction():
            await self._locked(conn, tenant, key_id)
            cur = await conn.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s "
                f"RETURNING {_COLUMNS}",
                [key_id],
            )
            row = await cur.fetchone()
            assert row is not None
            await self._notify(conn, key_id)
        return _record(row)

    async def _insert(
        self, conn: AsyncConnection[tuple[object, ...]], tenant: str, principal: str, name: str
    ) -> NewKey:
        key_id, secret = new_secret()
        cur = await conn.execute(
            "INSERT INTO api_keys (key_id, tenant, principal, display_name, secret_hash) "
            f"VALUES (%s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            [key_id, tenant, principal, name, self._hasher.hash(secret)],
        )
        row = await cur.fetchone()
        assert row is not None
        await self._notify(conn, key_id)
        return NewKey(_record(row), secret)

    async def _locked(
        self, conn: AsyncConnection[tuple[object, ...]], tenant: str, key_id: str
    ) -> ApiKeyRecord:
        cur = await conn.execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = %s AND tenant = %s FOR UPDATE",
            [key_id, tenant],
        )
        row = await cur.fetchone()
        if row is None:
            raise NotFound(
                f"no key tenants/{tenant}/keys/{key_id}",
                reason=ErrorReason.ERROR_REASON_API_KEY_NOT_FOUND,
            )
        return _record(row)

    async def _notify(self, conn: AsyncConnection[tuple[object, ...]], key_id: str) -> None:
        await conn.execute("SELECT pg_notify(%s, %s)", [self.channel, key_id])


def _record(row: tuple[object, ...]) -> ApiKeyRecord:
    return ApiKeyRecord(*row)  # type: ignore[arg-type]  # columns in _COLUMNS order


def _encode_token(last: ApiKeyRecord) -> str:
    raw = json.dumps([last.created_at.isoformat(), last.key_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_token(token: str) -> tuple[datetime, str]:
    try:
        created, key_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        after = datetime.fromisoformat(created)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument.field("page_token", f"malformed page token: {exc}") from None
    if after.tzinfo is None:
        raise InvalidArgument.field("page_token", "malformed page token: no time zone")
    return after, str(key_id)
