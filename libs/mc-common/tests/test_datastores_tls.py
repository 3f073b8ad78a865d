"""MC's clients against Postgres and Kafka that require TLS, with a CA made by the test:
the server's certificate is verified against the configured CA and the host name, and a client
that trusts another CA, or does not use TLS, is refused. (Redis over TLS is tested with the
limiter, whose hot path has its own client.)"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from aiokafka.errors import KafkaConnectionError

from mc.policy.v1.decision_events_pb2 import PolicyDecisionEvent
from mc_common.db import create_pool, migrate
from mc_common.events import EventConsumer, EventPublisher, GroupTimings, KafkaSecurity
from mc_common.events.envelope import ReceivedEvent
from mc_common.testing import infra
from mc_common.testing.tls import TestCA, TlsProxy, start_tls_postgres


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


async def test_postgres_verify_full_is_a_setting_and_refuses_the_wrong_ca(
    ca: TestCA, tmp_path: Path
) -> None:
    other = TestCA(tmp_path / "other", "another-ca")
    with start_tls_postgres(ca) as dsn:
        verified = f"{dsn}?sslmode=verify-full&sslrootcert={ca.cert}"
        pool = await create_pool(verified, 1, 1, schema="tls_check", name="tls")
        try:
            async with pool.connection() as conn:
                await conn.execute("CREATE SCHEMA IF NOT EXISTS tls_check")
                cursor = await conn.execute(
                    "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                )
                row = await cursor.fetchone()
                await conn.commit()
            assert row is not None and row[0] is True and row[1].startswith("TLS")
            migrations = tmp_path / "migrations"
            migrations.mkdir()
            (migrations / "0001_t.sql").write_text("CREATE TABLE t (id int);")
            await migrate(pool, migrations, schema="tls_check")
        finally:
            await pool.close()
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            await psycopg.AsyncConnection.connect(
                f"{dsn}?sslmode=verify-full&sslrootcert={other.cert}"
            )
        with pytest.raises(psycopg.OperationalError):  # the server accepts only hostssl
            await psycopg.AsyncConnection.connect(f"{dsn}?sslmode=disable")
        ip_dsn = dsn.replace("localhost", "127.0.0.2")  # not a name the certificate holds
        with pytest.raises(psycopg.OperationalError):
            await psycopg.AsyncConnection.connect(
                f"{ip_dsn}?sslmode=verify-full&sslrootcert={ca.cert}&connect_timeout=3"
            )


async def test_kafka_over_tls_verifies_the_broker(
    ca: TestCA,
    tmp_path: Path,
    topic_name: Callable[[str], str],
    kafka_consumer_timings: GroupTimings,
) -> None:
    proxy_port = infra.free_port()
    broker = infra.start_tansu(advertised=f"localhost:{proxy_port}")
    proxy = TlsProxy(ca.issue("kafka-broker"), ("127.0.0.1", broker.port), proxy_port)
    await proxy.start()
    bootstrap = f"localhost:{proxy_port}"
    topic = topic_name("tls")
    security = KafkaSecurity(protocol="SSL", ca_file=ca.cert)
    try:
        async with EventPublisher(bootstrap, source="mc-test", security=security) as pub:
            await pub.publish(
                topic, "acme", "mc.policy.decision.v1", PolicyDecisionEvent(decision_id="d")
            )
        seen: list[ReceivedEvent] = []
        done = asyncio.Event()

        async def handler(event: ReceivedEvent) -> None:
            seen.append(event)
            done.set()

        consumer = EventConsumer(
            bootstrap,
            topic,
            group_id=topic_name("g"),
            handler=handler,
            timings=kafka_consumer_timings,
            security=security,
        )
        task = asyncio.create_task(consumer.run())
        try:
            await asyncio.wait_for(done.wait(), 30)
        finally:
            await consumer.stop()
            await task
        assert seen[0].unpack(PolicyDecisionEvent).decision_id == "d"

        other = TestCA(tmp_path / "other", "another-ca")
        for wrong in (KafkaSecurity(protocol="SSL", ca_file=other.cert), KafkaSecurity()):
            publisher = EventPublisher(
                bootstrap, source="mc-test", security=wrong, request_timeout_ms=3000
            )
            with pytest.raises((KafkaConnectionError, ssl.SSLError, OSError)):
                await asyncio.wait_for(publisher.start(), 20)
            await publisher.stop()
    finally:
        await proxy.stop()
        broker.stop()


def test_kafka_security_refuses_settings_that_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TLS files"):
        KafkaSecurity(protocol="PLAINTEXT", ca_file=tmp_path / "ca.pem")
    with pytest.raises(ValueError, match="SASL mechanism, username and password"):
        KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512")
    with pytest.raises(ValueError, match="needs its key"):
        KafkaSecurity(protocol="SSL", cert_file=tmp_path / "c.pem")
    options = KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password="pw",
    ).client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
