"""Tests of `mc_common.db` against the real Postgres: pool, migrations, history checks, locking."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from psycopg import AsyncConnection
from psycopg_pool import PoolTimeout

from mc_common.db import (
    AppliedMigration,
    MigrationError,
    applied_migrations,
    create_pool,
    load_migrations,
    migrate,
    pending_migrations,
    validate_schema_name,
)

CREATE_ITEMS = "CREATE TABLE items (id integer PRIMARY KEY, label text NOT NULL);\n"
SEED_ITEMS = (
    "INSERT INTO items (id, label) VALUES (1, 'one');\nCREATE INDEX items_label ON items (label);\n"
)


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    return write_migrations(
        tmp_path / "migrations",
        {"0001_create_items.sql": CREATE_ITEMS, "0002_seed_items.sql": SEED_ITEMS},
    )


async def fetch_all(dsn: str, query: str) -> list[tuple[object, ...]]:
    async with await AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(query.encode())
        return await cursor.fetchall()


async def test_migrate_applies_in_order_and_records_history(
    pg_dsn: str, migrations_dir: Path
) -> None:
    applied = await migrate(pg_dsn, migrations_dir, schema="svc_a")

    assert [m.label for m in applied] == ["0001_create_items", "0002_seed_items"]
    async with await AsyncConnection.connect(pg_dsn) as conn:
        history = await applied_migrations(conn, "svc_a")
    assert [(row.version, row.name) for row in history] == [(1, "create_items"), (2, "seed_items")]
    assert history[0].checksum == hashlib.sha256(CREATE_ITEMS.encode()).hexdigest()
    assert all(row.applied_at <= datetime.now(UTC) for row in history)
    # Unqualified names in the files landed in the service schema, not in public.
    assert await fetch_all(pg_dsn, "SELECT id, label FROM svc_a.items") == [(1, "one")]
    assert await fetch_all(pg_dsn, "SELECT to_regclass('public.items')") == [(None,)]


async def test_migrate_again_is_a_no_op_and_applies_only_new_files(
    pg_dsn: str, migrations_dir: Path
) -> None:
    await migrate(pg_dsn, migrations_dir, schema="svc_a")

    assert await migrate(pg_dsn, migrations_dir, schema="svc_a") == []

    write_migrations(
        migrations_dir, {"0003_add_color.sql": "ALTER TABLE items ADD COLUMN color text;"}
    )
    assert [m.version for m in await migrate(pg_dsn, migrations_dir, schema="svc_a")] == [3]
    assert await fetch_all(pg_dsn, "SELECT count(*) FROM svc_a.items") == [(1,)]


async def test_edited_migration_is_refused(pg_dsn: str, migrations_dir: Path) -> None:
    await migrate(pg_dsn, migrations_dir, schema="svc_a")
    (migrations_dir / "0001_create_items.sql").write_text(CREATE_ITEMS + "-- tweak\n")
    write_migrations(migrations_dir, {"0003_more.sql": "CREATE TABLE more (x int);"})

    with pytest.raises(MigrationError, match=r"0001_create_items was edited: checksum"):
        await migrate(pg_dsn, migrations_dir, schema="svc_a")

    # Refused before applying anything: the new migration did not run.
    assert await fetch_all(pg_dsn, "SELECT to_regclass('svc_a.more')") == [(None,)]


async def test_deleted_or_renamed_applied_migration_is_refused(
    pg_dsn: str, migrations_dir: Path
) -> None:
    await migrate(pg_dsn, migrations_dir, schema="svc_a")

    (migrations_dir / "0002_seed_items.sql").rename(migrations_dir / "0002_seed.sql")
    with pytest.raises(MigrationError, match=r"0002_seed_items was renamed to 0002_seed\.sql"):
        await migrate(pg_dsn, migrations_dir, schema="svc_a")

    (migrations_dir / "0002_seed.sql").unlink()
    with pytest.raises(MigrationError, match=r"applied migration 0002_seed_items has no file"):
        await migrate(pg_dsn, migrations_dir, schema="svc_a")


def test_bad_file_sets_are_refused(tmp_path: Path) -> None:
    gap = write_migrations(tmp_path / "gap", {"0001_a.sql": "", "0003_c.sql": ""})
    with pytest.raises(MigrationError, match=r"migration 0002 is missing"):
        load_migrations(gap)

    duplicate = write_migrations(tmp_path / "dup", {"0001_a.sql": "", "0001_b.sql": ""})
    with pytest.raises(MigrationError, match=r"share version 1"):
        load_migrations(duplicate)

    misnamed = write_migrations(tmp_path / "bad", {"1_CamelCase.sql": ""})
    with pytest.raises(MigrationError, match=r"1_CamelCase\.sql: name must look like"):
        load_migrations(misnamed)

    with pytest.raises(MigrationError, match=r"does not exist"):
        load_migrations(tmp_path / "absent")


def test_pending_migration_before_an_applied_one_is_out_of_order(tmp_path: Path) -> None:
    files = load_migrations(
        write_migrations(tmp_path / "m", {"0001_a.sql": "", "0002_b.sql": "", "0003_c.sql": ""})
    )
    now = datetime.now(UTC)
    history = [
        AppliedMigration(m.version, m.name, m.checksum, now) for m in files if m.version != 2
    ]

    with pytest.raises(MigrationError, match=r"0002_b is pending but the later migration 0003"):
        pending_migrations(files, history)
    assert pending_migrations(files, history[:1]) == files[1:]


async def test_failed_migration_is_rolled_back_and_reported(
    pg_dsn: str, migrations_dir: Path
) -> None:
    write_migrations(
        migrations_dir,
        {"0003_broken.sql": "CREATE TABLE half (x int);\nSELECT * FROM no_such_table;\n"},
    )

    with pytest.raises(MigrationError, match=r"0003_broken failed .* rolled back"):
        await migrate(pg_dsn, migrations_dir, schema="svc_a")

    async with await AsyncConnection.connect(pg_dsn) as conn:
        assert [row.version for row in await applied_migrations(conn, "svc_a")] == [1, 2]
    assert await fetch_all(pg_dsn, "SELECT to_regclass('svc_a.half')") == [(None,)]


async def test_concurrent_migrations_apply_each_file_exactly_once(
    pg_dsn: str, tmp_path: Path
) -> None:
    directory = write_migrations(
        tmp_path / "m",
        {
            "0001_create_items.sql": CREATE_ITEMS,
            # Slow, so the four callers really overlap; a second run would fail on the key.
            "0002_seed_items.sql": "SELECT pg_sleep(0.2);\n" + SEED_ITEMS,
            "0003_counter.sql": "CREATE TABLE runs (n int);\nINSERT INTO runs VALUES (1);\n",
        },
    )

    results = await asyncio.gather(*(migrate(pg_dsn, directory, schema="svc_c") for _ in range(4)))

    assert sorted(len(applied) for applied in results) == [0, 0, 0, 3]
    assert await fetch_all(pg_dsn, "SELECT count(*) FROM svc_c.runs") == [(1,)]
    assert await fetch_all(pg_dsn, "SELECT count(*) FROM svc_c.schema_migrations") == [(3,)]


async def test_each_schema_keeps_its_own_tables_and_history(
    pg_dsn: str, migrations_dir: Path
) -> None:
    await migrate(pg_dsn, migrations_dir, schema="svc_a")
    applied_b = await migrate(pg_dsn, migrations_dir, schema="svc_b")

    assert len(applied_b) == 2
    assert await fetch_all(pg_dsn, "SELECT count(*) FROM svc_b.items") == [(1,)]
    async with await AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await conn.execute("DELETE FROM svc_b.items")
    assert await fetch_all(pg_dsn, "SELECT count(*) FROM svc_a.items") == [(1,)]


async def test_pool_is_pinned_to_the_service_schema_and_can_migrate(
    pg_dsn: str, migrations_dir: Path
) -> None:
    pool = await create_pool(pg_dsn, 1, 2, schema="svc_p", name="test")
    try:
        assert len(await migrate(pool, migrations_dir, schema="svc_p")) == 2
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT label FROM items")
            assert await cursor.fetchall() == [("one",)]
            cursor = await conn.execute("SHOW search_path")
            assert await cursor.fetchone() == ("svc_p,public",)
    finally:
        await pool.close()


async def test_migrate_on_a_caller_connection_restores_its_mode(
    pg_dsn: str, migrations_dir: Path
) -> None:
    async with await AsyncConnection.connect(pg_dsn) as conn:
        assert await migrate(conn, migrations_dir, schema="svc_a")
        assert conn.autocommit is False

        await conn.execute("SELECT 1")  # opens a transaction (autocommit is off)
        with pytest.raises(MigrationError, match="idle connection"):
            await migrate(conn, migrations_dir, schema="svc_a")
        await conn.rollback()


async def test_migrations_load_from_a_package(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "pkgroot" / "mc_fake_service" / "migrations"
    write_migrations(package, {"__init__.py": "", "0001_create_items.sql": CREATE_ITEMS})
    (package.parent / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgroot"))

    applied = await migrate(pg_dsn, "mc_fake_service.migrations", schema="svc_pkg")

    assert [m.label for m in applied] == ["0001_create_items"]
    with pytest.raises(MigrationError, match="cannot be imported"):
        load_migrations("mc_no_such_service.migrations")


async def test_unreachable_database_fails_to_open_pool() -> None:
    with pytest.raises(PoolTimeout):
        await create_pool("postgresql://nobody@127.0.0.1:1/none", open_timeout=0.5)


def test_schema_names_are_restricted() -> None:
    assert validate_schema_name("svc_1") == "svc_1"
    for bad in ("", "Svc", "1svc", "svc-a", "a" * 64, 'x"; DROP'):
        with pytest.raises(ValueError, match="invalid Postgres schema name"):
            validate_schema_name(bad)
