"""Tests of `mc_common.testing`: the infrastructure helpers and the plugin's fixtures."""

from __future__ import annotations

import socket
from collections.abc import Callable

import psycopg
import pytest
from redis.asyncio import Redis

from mc_common.testing import infra


def test_free_port_is_bindable() -> None:
    port = infra.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_unique_names_differ() -> None:
    names = {infra.unique_name("mc_test") for _ in range(100)}
    assert len(names) == 100
    assert all(name.startswith("mc_test_") for name in names)


def test_start_tansu_answers_metadata_and_stops() -> None:
    with infra.start_tansu() as broker:
        assert broker.is_running()
        assert infra.kafka_metadata_ok(broker.host, broker.port)
        assert broker.bootstrap_servers == f"127.0.0.1:{broker.port}"
        assert "memory://tansu/" in broker.log_tail()
    assert not broker.is_running()
    assert not broker.work_dir.exists()
    assert not infra.kafka_metadata_ok("127.0.0.1", broker.port, timeout=0.2)


def test_start_tansu_reports_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(infra.InfraError, match="Tansu"):
            infra.start_tansu(taken.getsockname()[1], startup_timeout=5)


def test_kafka_bootstrap_fixture_is_a_live_broker(kafka_bootstrap: str) -> None:
    host, port = kafka_bootstrap.rsplit(":", 1)
    assert infra.kafka_metadata_ok(host, int(port))


def test_topic_name_factory_is_unique(topic_name: Callable[[str], str]) -> None:
    first, second = topic_name("receipts"), topic_name("receipts")
    assert first != second
    assert first.startswith("receipts.")


def test_pg_dsn_is_a_fresh_database(pg_dsn: str, pg_admin_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT current_database(), count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    assert row is not None
    name, tables = row
    assert name.startswith("mc_test_")
    assert tables == 0


def test_create_and_drop_database(pg_admin_dsn: str) -> None:
    name = infra.unique_name("mc_test")
    dsn = infra.create_database(pg_admin_dsn, name)
    try:
        conn = psycopg.connect(dsn)  # left open on purpose: drop must force it out
        try:
            infra.drop_database(pg_admin_dsn, name)
        finally:
            conn.close()
        with psycopg.connect(pg_admin_dsn) as admin:
            row = admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
            assert row.fetchone() == (0,)
    finally:
        infra.drop_database(pg_admin_dsn, name)
    with pytest.raises(ValueError, match="invalid database name"):
        infra.create_database(pg_admin_dsn, "Robert'); DROP")


def test_environment_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MC_TEST_POSTGRES_DSN", "postgresql://elsewhere/db")
    monkeypatch.setenv("MC_REDIS_URL", "redis://elsewhere:6380/2")
    monkeypatch.delenv("MC_TEST_REDIS_URL", raising=False)
    assert infra.postgres_dsn() == "postgresql://elsewhere/db"
    assert infra.redis_url() == "redis://elsewhere:6380/2"


def test_local_servers_are_found_when_running(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (
        "MC_TEST_POSTGRES_DSN",
        "MC_POSTGRES_DSN",
        "MC_TEST_REDIS_URL",
        "MC_REDIS_URL",
    ):
        monkeypatch.delenv(variable, raising=False)
    machine = infra.postgres_reachable(infra.LOCAL_POSTGRES_DSNS[0])
    dsn = infra.postgres_dsn()
    assert (dsn == infra.LOCAL_POSTGRES_DSNS[0]) == machine  # else the embedded server's
    assert infra.postgres_reachable(dsn)
    if infra.redis_reachable():
        assert infra.redis_url() == infra.LOCAL_REDIS_URL


async def test_redis_client_uses_the_prefix(redis_client: Redis, redis_prefix: str) -> None:
    await redis_client.set(f"{redis_prefix}a", b"1")
    assert await redis_client.get(f"{redis_prefix}a") == b"1"
    assert redis_prefix.startswith("mc-test:")
