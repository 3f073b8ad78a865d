"""Postgres storage of the provenance service. Every query is scoped by tenant first.

Receipts are only ever inserted (the database refuses UPDATE/DELETE). Appends to a tenant's
chain run under a transaction-scoped advisory lock on the tenant, so replicas never fork a chain
(see `mc_pql.chain_store`).
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from mc_pql.chain_store import ChainAppender, appender
from mc_pql.models import DecisionRecord, ExecutionRecord, ReceiptRow, SigningKeyRecord


def _execution(row: dict[str, Any]) -> ExecutionRecord:
    return ExecutionRecord(
        tenant=row["tenant"],
        execution_id=row["execution_id"],
        package_name=row["package_name"],
        package_version=row["package_version"],
        package_digest=row["package_digest"],
        region=row["region"],
        status=row["status"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        labels=dict(row["labels"]),
        recorded_at=row["recorded_at"],
    )


def _decision(row: dict[str, Any]) -> DecisionRecord:
    return DecisionRecord(**{k: row[k] for k in DecisionRecord.__slots__})  # type: ignore[attr-defined]


def _receipt(row: dict[str, Any]) -> ReceiptRow:
    return ReceiptRow(
        tenant=row["tenant"],
        sequence=row["sequence"],
        digest=row["digest"],
        previous_digest=row["previous_digest"],
        execution_id=row["execution_id"],
        envelope=bytes(row["envelope"]),
        signer_key_id=row["signer_key_id"],
        client_envelope=None if row["client_envelope"] is None else bytes(row["client_envelope"]),
        client_key_id=row["client_key_id"],
        recorded_at=row["recorded_at"],
    )


def _key(row: dict[str, Any]) -> SigningKeyRecord:
    return SigningKeyRecord(**{k: row[k] for k in SigningKeyRecord.__slots__})  # type: ignore[attr-defined]


_RECEIPT_COLUMNS = (
    "tenant, sequence, digest, previous_digest, execution_id, envelope, signer_key_id, "
    "client_envelope, client_key_id, recorded_at"
)


class ProvenanceStore:
    """Tenant-scoped reads and writes of executions, receipts, decisions and keys."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    # -- executions --------------------------------------------------------------------------

    async def insert_execution(
        self, tenant: str, record: ExecutionRecord, content_sha256: str
    ) -> tuple[ExecutionRecord, str]:
        """Insert unless present; returns the stored record and its content digest."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                """
                INSERT INTO executions (tenant, execution_id, package_name, package_version,
                    package_digest, region, status, started_at, finished_at, labels,
                    content_sha256)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (tenant, execution_id) DO NOTHING
                """,
                (
                    tenant,
                    record.execution_id,
                    record.package_name,
                    record.package_version,
                    record.package_digest,
                    record.region,
                    record.status,
                    record.started_at,
                    record.finished_at,
                    json.dumps(record.labels),
                    content_sha256,
                ),
            )
            await cur.execute(
                "SELECT * FROM executions WHERE tenant = %s AND execution_id = %s",
                (tenant, record.execution_id),
            )
            row = await cur.fetchone()
            assert row is not None
            return _execution(row), row["content_sha256"]

    async def get_execution(self, tenant: str, execution_id: str) -> ExecutionRecord | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT * FROM executions WHERE tenant = %s AND execution_id = %s",
                (tenant, execution_id),
            )
            row = await cur.fetchone()
            return None if row is None else _execution(row)

    async def list_executions(
        self, tenant: str, limit: int, before: tuple[datetime, str] | None
    ) -> list[ExecutionRecord]:
        """Newest first; `before` is the (recorded_at, execution_id) of the previous page's end."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            if before is None:
                await cur.execute(
                    "SELECT * FROM executions WHERE tenant = %s "
                    "ORDER BY recorded_at DESC, execution_id DESC LIMIT %s",
                    (tenant, limit),
                )
            else:
                await cur.execute(
                    "SELECT * FROM executions WHERE tenant = %s "
                    "AND (recorded_at, execution_id) < (%s, %s) "
                    "ORDER BY recorded_at DESC, execution_id DESC LIMIT %s",
                    (tenant, before[0], before[1], limit),
                )
            return [_execution(r) for r in await cur.fetchall()]

    # -- receipts ----------------------------------------------------------------------------

    def chain_appender(self) -> contextlib.AbstractAsyncContextManager[ChainAppender]:
        """A connection for a chain writer's appends (see `mc_pql.chain_store`)."""
        return appender(self._pool)

    async def get_receipt(self, tenant: str, digest: str) -> ReceiptRow | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_RECEIPT_COLUMNS} FROM receipts WHERE tenant = %s AND digest = %s",
                (tenant, digest),
            )
            row = await cur.fetchone()
            return None if row is None else _receipt(row)

    async def get_receipt_at(self, tenant: str, sequence: int) -> ReceiptRow | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_RECEIPT_COLUMNS} FROM receipts WHERE tenant = %s AND sequence = %s",
                (tenant, sequence),
            )
            row = await cur.fetchone()
            return None if row is None else _receipt(row)

    async def list_receipts(
        self,
        tenant: str,
        after_sequence: int,
        limit: int,
        execution_id: str = "",
        *,
        max_bytes: int | None = None,
    ) -> list[ReceiptRow]:
        """Receipts in ascending chain order after `after_sequence`.

        With `max_bytes`, rows stop at the first one that takes the stored envelopes past it
        (that one included; at least one row), so a page never reads more than it can serve.
        """
        query = f"SELECT {_RECEIPT_COLUMNS} FROM receipts WHERE tenant = %s AND sequence > %s"
        params: list[Any] = [tenant, after_sequence]
        if execution_id:
            query += " AND execution_id = %s"
            params.append(execution_id)
        query += " ORDER BY sequence LIMIT %s"
        params.append(limit)
        if max_bytes is not None:
            # Sizes come from the stored lengths, without reading (detoasting) the envelopes
            # of rows beyond the budget.
            size = "octet_length(envelope) + coalesce(octet_length(client_envelope), 0)"
            query = (
                f"SELECT {_RECEIPT_COLUMNS} FROM (SELECT *, sum({size}) OVER "
                f"(ORDER BY sequence ROWS UNBOUNDED PRECEDING) - {size} AS before "
                f"FROM ({query}) AS candidates) AS page WHERE before < %s ORDER BY sequence"
            )
            params.append(max_bytes)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            return [_receipt(r) for r in await cur.fetchall()]

    async def find_request(self, tenant: str, key: str) -> tuple[str, int, int] | None:
        """(request digest, first sequence, receipt count) of the tenant's request `key`."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT request_sha256, sequence, request_count FROM receipts "
                "WHERE tenant = %s AND idempotency_key = %s",
                (tenant, key),
            )
            row = await cur.fetchone()
            return None if row is None else (str(row[0]), int(row[1]), int(row[2]))

    # -- policy decisions --------------------------------------------------------------------

    @staticmethod
    async def insert_decision(
        conn: AsyncConnection[Any], tenant: str, record: DecisionRecord
    ) -> bool:
        """Insert on `conn` (so callers can share a transaction); False when it already existed."""
        async with conn.cursor() as cur:
            await cur.execute(
                """
                INSERT INTO policy_decisions (tenant, decision_id, execution_id, policy,
                    bundle_digest, rule, allow, reason, remediation, decided_at)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (tenant, decision_id) DO NOTHING
                """,
                (
                    tenant,
                    record.decision_id,
                    record.execution_id,
                    record.policy,
                    record.bundle_digest,
                    record.rule,
                    record.allow,
                    record.reason,
                    record.remediation,
                    record.decided_at,
                ),
            )
            return cur.rowcount == 1

    async def record_decision(self, tenant: str, record: DecisionRecord) -> bool:
        async with self._pool.connection() as conn:
            return await self.insert_decision(conn, tenant, record)

    async def get_decision(self, tenant: str, decision_id: str) -> DecisionRecord | None:
        async with self._pool.connection() as conn:
            return await self.decision_on(conn, tenant, decision_id)

    @staticmethod
    async def decision_on(
        conn: AsyncConnection[Any], tenant: str, decision_id: str
    ) -> DecisionRecord | None:
        """Read a decision on `conn` (inside a caller's transaction)."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT * FROM policy_decisions WHERE tenant = %s AND decision_id = %s",
                (tenant, decision_id),
            )
            row = await cur.fetchone()
            return None if row is None else _decision(row)

    async def list_decisions(
        self,
        tenant: str,
        limit: int,
        before: tuple[datetime, str] | None,
        execution_id: str = "",
    ) -> list[DecisionRecord]:
        """Newest first by decision time; `before` is the previous page's last (time, id)."""
        query = "SELECT * FROM policy_decisions WHERE tenant = %s"
        params: list[Any] = [tenant]
        if execution_id:
            query += " AND execution_id = %s"
            params.append(execution_id)
        if before is not None:
            query += " AND (decided_at, decision_id) < (%s, %s)"
            params += [before[0], before[1]]
        query += " ORDER BY decided_at DESC, decision_id DESC LIMIT %s"
        params.append(limit)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            return [_decision(r) for r in await cur.fetchall()]

    # -- tenant signing keys -----------------------------------------------------------------

    async def register_key(self, key_id: str, tenant: str, pem: str) -> SigningKeyRecord | None:
        """Register a key; returns the stored row, or None if the id belongs to another tenant."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO signing_keys (key_id, tenant, public_key_pem) VALUES (%s, %s, %s) "
                "ON CONFLICT (key_id) DO NOTHING",
                (key_id, tenant, pem),
            )
            await cur.execute("SELECT * FROM signing_keys WHERE key_id = %s", (key_id,))
            row = await cur.fetchone()
            assert row is not None
            return _key(row) if row["tenant"] == tenant else None

    async def revoke_key(self, key_id: str) -> SigningKeyRecord | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE signing_keys SET revoked_at = coalesce(revoked_at, now()) "
                "WHERE key_id = %s RETURNING *",
                (key_id,),
            )
            row = await cur.fetchone()
            return None if row is None else _key(row)

    async def tenant_keys(self, tenant: str) -> list[SigningKeyRecord]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT * FROM signing_keys WHERE tenant = %s", (tenant,))
            return [_key(r) for r in await cur.fetchall()]
