"""Versioned SQL migrations: `NNNN_name.sql` files applied in order, once, under a lock.

Each service keeps its migrations in a package directory (for example `mc_pql/migrations/`)
and calls `migrate()` at start-up. Every replica may call it at the same time: a Postgres
advisory lock keyed by the schema name serialises them, so each migration runs exactly once,
in its own transaction, and is recorded in `<schema>.schema_migrations` with its sha256.

`migrate()` refuses to run (raising `MigrationError`) when history and files disagree: an
applied migration was edited (checksum), renamed or deleted, a file is missing from the
numbering, or a new file sorts before one that is already applied. Migrations are forward-only;
to change an applied one, add a new file.

NOTE: each file runs inside a transaction, so statements that cannot (such as
`CREATE INDEX CONCURRENTLY`) are not supported.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeAlias

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from mc_common.db.pool import validate_schema_name

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "schema_migrations"
"""Name of the history table created in each migrated schema."""

MigrationSource: TypeAlias = "str | os.PathLike[str] | Traversable"
"""Where migration files live: a directory path, a `Traversable` from `importlib.resources`,
or a dotted package name such as `"mc_pql.migrations"` (a string containing `/` is a path)."""

_FILE_NAME = re.compile(r"(?P<version>\d{4,})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql")


class MigrationError(RuntimeError):
    """Migrations cannot be applied safely; the service must not start.

    The message lists every problem found, one per line, with the file names involved.
    """


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: `version` from its `NNNN` prefix, `checksum` = sha256 of its bytes."""

    version: int
    name: str
    sql: str
    checksum: str

    @property
    def label(self) -> str:
        """`0001_create_receipts`: the file name without `.sql`."""
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    """One row of `schema_migrations`."""

    version: int
    name: str
    checksum: str
    applied_at: datetime

    @property
    def label(self) -> str:
        """`0001_create_receipts`: the file name the row was applied from, without `.sql`."""
        return f"{self.version:04d}_{self.name}"


def _resolve_source(source: MigrationSource) -> Traversable:
    if isinstance(source, str) and "/" not in source and os.sep not in source:
        try:
            return resources.files(source)
        except ModuleNotFoundError as err:
            raise MigrationError(f"migrations package {source!r} cannot be imported") from err
    if isinstance(source, (str, os.PathLike)):
        return Path(source)
    return source


def load_migrations(source: MigrationSource) -> list[Migration]:
    """Read and check the migration files of `source`, sorted by version.

    Files not ending in `.sql` are ignored (`__init__.py` may sit beside them).

    Raises:
        MigrationError: the directory is missing, a `.sql` file is not named
            `NNNN_lower_snake_name.sql`, two files share a version, or the versions are not
            exactly 1, 2, 3, ... (a gap means a file is missing).
    """
    directory = _resolve_source(source)
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    problems: list[str] = []
    by_version: dict[int, Migration] = {}
    for entry in directory.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            problems.append(f"{entry.name}: name must look like 0001_lower_snake_name.sql")
            continue
        data = entry.read_bytes()
        migration = Migration(
            version=int(match["version"]),
            name=match["name"],
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
        if (clash := by_version.get(migration.version)) is not None:
            problems.append(
                f"{migration.label}.sql and {clash.label}.sql share version {migration.version}"
            )
            continue
        by_version[migration.version] = migration
    for expected in range(1, max(by_version, default=0) + 1):
        if expected not in by_version:
            problems.append(f"migration {expected:04d} is missing (versions must be 1, 2, 3...)")
    if problems:
        raise MigrationError(f"bad migrations in {directory}:\n  " + "\n  ".join(problems))
    return [by_version[version] for version in sorted(by_version)]


def pending_migrations(
    migrations: Sequence[Migration], applied: Sequence[AppliedMigration]
) -> list[Migration]:
    """The migrations still to apply, after checking that `applied` agrees with the files.

    Raises:
        MigrationError: an applied migration's file is gone, renamed or edited, or a pending
            migration sorts before an applied one (out of order).
    """
    files = {migration.version: migration for migration in migrations}
    problems: list[str] = []
    for row in applied:
        file = files.get(row.version)
        if file is None:
            problems.append(f"applied migration {row.label} has no file")
        elif file.name != row.name:
            problems.append(f"applied migration {row.label} was renamed to {file.label}.sql")
        elif file.checksum != row.checksum:
            problems.append(
                f"applied migration {row.label} was edited: checksum {row.checksum[:12]}... in "
                f"the database, {file.checksum[:12]}... on disk; add a new migration instead"
            )
    applied_versions = {row.version for row in applied}
    pending = [m for m in migrations if m.version not in applied_versions]
    newest_applied = max(applied_versions, default=0)
    for migration in pending:
        if migration.version < newest_applied:
            problems.append(
                f"migration {migration.label} is pending but the later migration "
                f"{newest_applied:04d} is already applied (out of order)"
            )
    if problems:
        raise MigrationError(
            "migration history does not match the files:\n  " + "\n  ".join(problems)
        )
    return pending


def advisory_lock_key(schema: str) -> int:
    """The signed 64-bit `pg_advisory_lock` key that serialises migrations of `schema`."""
    digest = hashlib.sha256(f"mc_common.db.migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def applied_migrations(
    conn: AsyncConnection[Any], schema: str = "public"
) -> list[AppliedMigration]:
    """The rows of `<schema>.schema_migrations`, by version; empty if the table is missing."""
    cursor = await conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL",
        (f"{validate_schema_name(schema)}.{MIGRATIONS_TABLE}",),
    )
    exists = await cursor.fetchone()
    if exists is None or not exists[0]:
        return []
    cursor = await conn.execute(
        sql.SQL("SELECT version, name, checksum, applied_at FROM {} ORDER BY version").format(
            sql.Identifier(schema, MIGRATIONS_TABLE)
        )
    )
    return [
        AppliedMigration(version=row[0], name=row[1], checksum=row[2], applied_at=row[3])
        for row in await cursor.fetchall()
    ]


MigrationTarget: TypeAlias = "str | AsyncConnection[Any] | AsyncConnectionPool[Any]"
"""What `migrate()` runs against: a DSN, an idle connection, or a pool to borrow one from."""


async def migrate(
    target: MigrationTarget,
    source: MigrationSource,
    *,
    schema: str = "public",
) -> list[Migration]:
    """Apply the pending migrations of `source` to `schema`; return those this call applied.

    Safe to call from every replica at start-up: callers queue on an advisory lock, and the
    ones that get it after the work is done find nothing pending. Each migration runs in its
    own transaction with `search_path = <schema>, public` and is recorded in
    `<schema>.schema_migrations` (version, name, checksum, applied_at) in that transaction.
    The schema is created if missing.

    Args:
        target: a DSN, an idle `AsyncConnection` (left in its original autocommit mode), or a
            pool to borrow a connection from.
        source: see `MigrationSource`.
        schema: the service's Postgres schema.

    Raises:
        MigrationError: the files or the history are inconsistent (see `load_migrations` and
            `pending_migrations`), the connection is inside a transaction, or a migration's
            SQL failed (that migration is rolled back; earlier ones stay applied).
    """
    validate_schema_name(schema)
    migrations = load_migrations(source)
    if isinstance(target, str):
        async with await AsyncConnection.connect(target, autocommit=True) as conn:
            return await _migrate_connection(conn, migrations, schema)
    if isinstance(target, AsyncConnectionPool):
        async with target.connection() as conn:
            return await _migrate_connection(conn, migrations, schema)
    return await _migrate_connection(target, migrations, schema)


async def _migrate_connection(
    conn: AsyncConnection[Any], migrations: Sequence[Migration], schema: str
) -> list[Migration]:
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise MigrationError("migrate() needs an idle connection, not one inside a transaction")
    was_autocommit = conn.autocommit
    # Autocommit, so the session-level advisory lock spans the per-migration transactions
    # instead of turning them into savepoints of one outer transaction.
    await conn.set_autocommit(True)
    key = advisory_lock_key(schema)
    try:
        await conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            return await _apply_pending(conn, migrations, schema)
        finally:
            if not conn.closed:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        if not conn.closed:
            await conn.set_autocommit(was_autocommit)


async def _apply_pending(
    conn: AsyncConnection[Any], migrations: Sequence[Migration], schema: str
) -> list[Migration]:
    table = sql.Identifier(schema, MIGRATIONS_TABLE)
    async with conn.transaction():
        cursor = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        # Checked first because CREATE SCHEMA IF NOT EXISTS still needs CREATE on the database.
        if await cursor.fetchone() is None:
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(table)
        )
    pending = pending_migrations(migrations, await applied_migrations(conn, schema))
    for migration in pending:
        try:
            async with conn.transaction():
                await conn.execute(
                    sql.SQL("SET LOCAL search_path TO {}, public").format(sql.Identifier(schema))
                )
                # Bytes and no parameters: psycopg sends the file as one simple query, so a
                # file may hold several statements.
                await conn.execute(migration.sql.encode("utf-8"))
                await conn.execute(
                    sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(
                        table
                    ),
                    (migration.version, migration.name, migration.checksum),
                )
        except psycopg.Error as err:
            raise MigrationError(
                f"migration {migration.label} failed in schema {schema!r} and was rolled back: "
                f"{err}"
            ) from err
        log.info(
            "applied migration %s",
            migration.label,
            extra={"schema": schema, "version": migration.version},
        )
    return pending
