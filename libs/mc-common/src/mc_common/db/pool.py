"""Async Postgres connection pools for services, optionally pinned to one Postgres schema."""

from __future__ import annotations

import re
from typing import TypeAlias

from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

Pool: TypeAlias = AsyncConnectionPool[AsyncConnection[TupleRow]]
"""The pool type `create_pool` returns: plain psycopg async connections with tuple rows."""

# Lower-case identifiers only: they need no quoting in `search_path` or in libpq `options`,
# and Postgres folds unquoted names to lower case anyway, so `Pql` would be a trap.
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def validate_schema_name(schema: str) -> str:
    """Return `schema` unchanged if it is a safe lower-case Postgres identifier, else raise.

    Raises:
        ValueError: the name is empty, too long, or has characters other than `[a-z0-9_]`.
    """
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"invalid Postgres schema name {schema!r}: use 1-63 characters of [a-z0-9_], "
            "not starting with a digit"
        )
    return schema


def search_path_options(dsn: str, schema: str) -> str:
    """The libpq `options` value for `dsn` with `search_path` set to `schema`, then `public`.

    Keeps any `options` already present in `dsn` (a later `-c` wins in Postgres).
    """
    existing = str(conninfo_to_dict(dsn).get("options") or "")
    setting = f"-c search_path={validate_schema_name(schema)},public"
    return f"{existing} {setting}".strip()


async def create_pool(
    dsn: str,
    min_size: int = 1,
    max_size: int = 10,
    *,
    schema: str | None = None,
    name: str | None = None,
    acquire_timeout: float = 30.0,
    open_timeout: float = 30.0,
) -> Pool:
    """Create and open a connection pool; the caller closes it (`await pool.close()`).

    Args:
        dsn: libpq connection string or URI.
        min_size: connections kept open.
        max_size: upper bound on open connections.
        schema: when set, every connection starts with `search_path = <schema>, public`, so
            unqualified table names resolve to the service's own schema.
        name: pool name shown in logs and stats.
        acquire_timeout: seconds `pool.connection()` waits for a free connection.
        open_timeout: seconds to wait for `min_size` connections before giving up.

    Raises:
        psycopg_pool.PoolTimeout: the database was not reachable within `open_timeout`.
    """
    kwargs: dict[str, object] = {}
    if schema is not None:
        kwargs["options"] = search_path_options(dsn, schema)
    pool: Pool = AsyncConnectionPool(
        dsn,
        connection_class=AsyncConnection[TupleRow],
        kwargs=kwargs,
        min_size=min_size,
        max_size=max_size,
        name=name,
        timeout=acquire_timeout,
        open=False,
    )
    try:
        await pool.open(wait=True, timeout=open_timeout)
    except BaseException:
        await pool.close()
        raise
    return pool
