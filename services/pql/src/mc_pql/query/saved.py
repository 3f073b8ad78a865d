"""Saved queries: named per tenant, signed by the service (DSSE) when saved, and verified
before every run, so a query edited in storage is refused rather than run."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.db import Pool
from mc_common.errors import FailedPrecondition, NotFound, PreconditionViolation
from mc_common.signing import KeyRing, Signer
from mc_common.signing.dsse import Envelope, sign_envelope, verify_envelope
from mc_common.signing.errors import SignatureError
from mc_pql.query.ast import Query
from mc_pql.query.engine import QueryEngine, QueryResult
from mc_pql.query.parser import parse
from mc_pql.query.planner import ParamValue

PAYLOAD_TYPE: Final = "application/vnd.maestro-conductor.pql-saved-query+json"
MAX_SAVED_PER_TENANT: Final = 1000


@dataclass(frozen=True, slots=True)
class SavedQuery:
    """A stored query; `verified` says whether its envelope verifies and matches its fields."""

    name: str
    query: str
    description: str
    parameters: tuple[str, ...]
    signer_key_id: str
    envelope: bytes
    verified: bool
    saved_at: datetime


class SavedQueries:
    """Save, list and run signed queries of a tenant."""

    def __init__(self, pool: Pool, engine: QueryEngine, signer: Signer, keys: KeyRing) -> None:
        self._pool = pool
        self._engine = engine
        self._signer = signer
        self._keys = keys

    async def save(self, tenant: str, name: str, text: str, description: str) -> SavedQuery:
        """Check that `text` is PQL, sign it and store it under `name` (replacing any)."""
        parsed = parse(text)
        saved_at = datetime.now(UTC).replace(microsecond=0)
        payload = _payload(tenant, name, text, description, saved_at)
        envelope = sign_envelope(payload, PAYLOAD_TYPE, self._signer)
        raw = envelope.to_json().encode()
        async with self._pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "SELECT count(*) FROM saved_queries WHERE tenant = %s AND name <> %s",
                (tenant, name),
            )
            row = await cursor.fetchone()
            if row is not None and int(row[0]) >= MAX_SAVED_PER_TENANT:
                raise FailedPrecondition(
                    f"a tenant keeps at most {MAX_SAVED_PER_TENANT} saved queries",
                    [PreconditionViolation("QUOTA", "saved_queries", "delete one first")],
                    reason=ErrorReason.ERROR_REASON_SAVED_QUERY_QUOTA,
                )
            await conn.execute(
                "INSERT INTO saved_queries (tenant, name, query, description, envelope,"
                " signer_key_id, saved_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (tenant, name) DO UPDATE SET query = excluded.query,"
                " description = excluded.description, envelope = excluded.envelope,"
                " signer_key_id = excluded.signer_key_id, saved_at = excluded.saved_at",
                (tenant, name, text, description, raw, self._signer.key_id, saved_at),
            )
        return SavedQuery(
            name, text, description, _parameters(parsed), self._signer.key_id, raw, True, saved_at
        )

    async def list(self, tenant: str) -> list[SavedQuery]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT name, query, description, envelope, signer_key_id, saved_at"
                " FROM saved_queries WHERE tenant = %s ORDER BY name LIMIT %s",
                (tenant, MAX_SAVED_PER_TENANT),
            )
            rows = await cursor.fetchall()
        return [self._verified(tenant, *row) for row in rows]

    async def run(
        self, tenant: str, name: str, params: Mapping[str, ParamValue] | None
    ) -> QueryResult:
        """Verify the saved query `name`, then run it; a query whose signature or fields do
        not verify is FAILED_PRECONDITION and is not run."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT name, query, description, envelope, signer_key_id, saved_at"
                " FROM saved_queries WHERE tenant = %s AND name = %s",
                (tenant, name),
            )
            row = await cursor.fetchone()
        if row is None:
            raise NotFound(
                f"no saved query named {name!r}",
                reason=ErrorReason.ERROR_REASON_SAVED_QUERY_NOT_FOUND,
            )
        saved = self._verified(tenant, *row)
        if not saved.verified:
            raise FailedPrecondition(
                f"saved query {name!r} does not verify: it was changed after it was signed",
                [PreconditionViolation("SIGNATURE", f"saved_queries/{name}", "re-save it")],
                reason=ErrorReason.ERROR_REASON_SAVED_QUERY_UNVERIFIED,
            )
        return await self._engine.run(tenant, saved.query, params)

    def _verified(
        self,
        tenant: str,
        name: str,
        text: str,
        description: str,
        raw: bytes,
        key_id: str,
        saved_at: datetime,
    ) -> SavedQuery:
        verified = False
        try:
            envelope = Envelope.from_json(bytes(raw))
            payload = verify_envelope(envelope, self._keys, payload_type=PAYLOAD_TYPE)
            verified = payload == _payload(tenant, name, text, description, saved_at) and any(
                s.keyid == key_id for s in envelope.signatures
            )
        except (SignatureError, ValueError):
            verified = False
        try:
            parameters = _parameters(parse(text))
        except ValueError:
            parameters = ()
        return SavedQuery(
            name, text, description, parameters, key_id, bytes(raw), verified, saved_at
        )


def _payload(tenant: str, name: str, text: str, description: str, saved_at: datetime) -> bytes:
    document = {
        "tenant": tenant,
        "name": name,
        "query": text,
        "description": description,
        "saved_at": saved_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _parameters(query: Query) -> tuple[str, ...]:
    """Names of the `:params` a query uses, in order of first use."""
    names: list[str] = []

    def visit(node: object) -> None:
        from mc_pql.query import ast

        if isinstance(node, ast.Param) and node.name not in names:
            names.append(node.name)
        elif isinstance(node, ast.Compare):
            visit(node.value)
        elif isinstance(node, ast.InList):
            for v in node.values:
                visit(v)
        elif isinstance(node, ast.And | ast.Or):
            visit(node.left)
            visit(node.right)
        elif isinstance(node, ast.Not):
            visit(node.operand)

    visit(query.where)
    return tuple(names)
