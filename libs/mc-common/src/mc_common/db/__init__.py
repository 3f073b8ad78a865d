"""Postgres access for MC services: a connection-pool helper and versioned SQL migrations.

Typical service start-up::

    pool = await create_pool(settings.postgres_dsn, schema="pql")
    await migrate(pool, "mc_pql.migrations", schema="pql")
"""

from __future__ import annotations

from mc_common.db.migrations import (
    MIGRATIONS_TABLE,
    AppliedMigration,
    Migration,
    MigrationError,
    MigrationSource,
    MigrationTarget,
    advisory_lock_key,
    applied_migrations,
    load_migrations,
    migrate,
    pending_migrations,
)
from mc_common.db.pool import Pool, create_pool, validate_schema_name

__all__ = [
    "MIGRATIONS_TABLE",
    "AppliedMigration",
    "Migration",
    "MigrationError",
    "MigrationSource",
    "MigrationTarget",
    "Pool",
    "advisory_lock_key",
    "applied_migrations",
    "create_pool",
    "load_migrations",
    "migrate",
    "pending_migrations",
    "validate_schema_name",
]
