"""pytest plugin with the infrastructure fixtures every MC test suite shares.

Register once in the root conftest: `pytest_plugins = ["mc_common.testing.plugin"]`.

Fixtures (all lazy: a broker or database is started only for tests that ask for it):

- `kafka_bootstrap` (session): `host:port` of one memory-only Tansu broker for the session,
  or of `$MC_TEST_KAFKA_BOOTSTRAP` when set.
- `kafka_consumer_timings` (session): short consumer-group timings (`GroupTimings`) for
  Tansu: `EventConsumer(..., timings=kafka_consumer_timings)`, or
  `AIOKafkaConsumer(..., **kafka_consumer_timings.consumer_options())`.
- `topic_name` (function): factory `topic_name("receipts") -> "receipts.<hex>"`, unique per
  call; also good for group ids.
- `pg_admin_dsn` (session): DSN of a Postgres user that may create databases.
- `pg_dsn` (function): DSN of a fresh database `mc_test_<hex>`, dropped after the test.
- `redis_server_url` (session): URL of a running Redis.
- `redis_prefix` (function): unique key prefix `mc-test:<hex>:`.
- `redis_client` (function): `redis.asyncio.Redis` on that server; keys under `redis_prefix`
  are deleted after the test and the client is closed.
- `mc_trust_domain` (session): a test CA for `mc.test` (`TestTrustDomain`); `MC_IDENTITY_*`
  point every server started in the session at its `test-server` SVID (autouse), and
  `mc_trust_domain.channel(address)` is an mTLS client channel calling as the gateway.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from mc_common.events.consumer import GroupTimings
from mc_common.testing import infra
from mc_common.testing.identity import TestTrustDomain


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of the session's Kafka broker (Tansu unless overridden)."""
    if external := os.environ.get("MC_TEST_KAFKA_BOOTSTRAP"):
        yield external
        return
    broker = infra.start_tansu()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_consumer_timings() -> GroupTimings:
    """See `infra.FAST_CONSUMER_TIMINGS`."""
    return infra.FAST_CONSUMER_TIMINGS


@pytest.fixture
def topic_name() -> Callable[[str], str]:
    """Factory of unique Kafka topic (or group) names: `<base>.<12 hex chars>`."""

    def make(base: str = "test") -> str:
        return f"{base}.{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture(scope="session")
def pg_admin_dsn() -> str:
    """DSN of a Postgres role allowed to create databases."""
    return infra.postgres_dsn()


@pytest.fixture
def pg_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """DSN of a fresh, empty database for this test only; dropped (forcibly) afterwards."""
    name = infra.unique_name("mc_test")
    dsn = infra.create_database(pg_admin_dsn, name)
    try:
        yield dsn
    finally:
        infra.drop_database(pg_admin_dsn, name)


@pytest.fixture(scope="session")
def redis_server_url() -> str:
    """URL of a running Redis server."""
    return infra.redis_url()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses; `redis_client` deletes its keys afterwards."""
    return f"mc-test:{uuid.uuid4().hex[:16]}:"


@pytest_asyncio.fixture(loop_scope="session")
async def redis_client(redis_server_url: str, redis_prefix: str) -> AsyncIterator[Redis]:
    """An async Redis client; keys starting with `redis_prefix` are removed after the test."""
    client = Redis.from_url(redis_server_url)
    try:
        yield client
    finally:
        try:
            keys = [key async for key in client.scan_iter(match=f"{redis_prefix}*", count=500)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


@pytest.fixture(scope="session")
def mc_trust_domain(tmp_path_factory: pytest.TempPathFactory) -> TestTrustDomain:
    """The session's test trust domain (CA and SVIDs)."""
    return TestTrustDomain(tmp_path_factory.mktemp("mc-identity"))


@pytest.fixture(scope="session", autouse=True)
def _mc_identity_env(mc_trust_domain: TestTrustDomain) -> Iterator[None]:
    """Every server started in the session serves mTLS as `test-server`."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in mc_trust_domain.env().items():
            patch.setenv(key, value)
        yield
