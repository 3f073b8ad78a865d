"""The limiter over Redis that requires TLS, client certificates and an ACL user, as managed
Redis services do: the hot path (the pipelined check connection, not a redis-py fallback)
speaks TLS with the CA, client certificate and host name of the `rediss://` URL; a client that
trusts another CA or sends the wrong ACL password is refused."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from test_service import OPERATOR, md, rule, start_limiter

from mc.limiter.v1 import limiter_service_pb2 as svc
from mc.limiter.v1 import limiter_service_pb2_grpc as svc_grpc
from mc_common.testing.identity import TestTrustDomain
from mc_common.testing.tls import TestCA, start_tls_redis
from mc_limiter.redis_client import PipelinedConnection, make_client
from mc_limiter.settings import LimiterSettings

PASSWORD = "s3cret-pw"


def url(port: int, ca: Path, client_cert: Path, client_key: Path, password: str = PASSWORD) -> str:
    query = (
        f"ssl_ca_certs={quote(str(ca))}&ssl_certfile={quote(str(client_cert))}"
        f"&ssl_keyfile={quote(str(client_key))}"
    )
    return f"rediss://mc-limiter:{password}@localhost:{port}/0?{query}"


async def test_checks_run_over_tls_with_an_acl_user(
    tmp_path: Path, redis_prefix: str, mc_trust_domain: TestTrustDomain
) -> None:
    ca = TestCA(tmp_path / "ca")
    client = ca.issue("mc-limiter", client=True)
    with start_tls_redis(ca, user="mc-limiter", password=PASSWORD) as port:
        settings = LimiterSettings(
            redis_urls=[url(port, ca.cert, client.cert, client.key)],
            key_prefix=f"{redis_prefix}rl",
            fairshare_key_prefix=f"{redis_prefix}fs",
            socket_timeout_ms=2000,  # TLS handshakes on a loaded machine
        )
        app, running = await start_limiter(settings)
        try:
            async with mc_trust_domain.channel(running.address) as channel:
                stub = svc_grpc.LimiterServiceStub(channel)
                await stub.PutRule(svc.PutRuleRequest(rule=rule()), metadata=OPERATOR)
                decisions = [
                    await stub.Check(
                        svc.CheckRequest(tenant="acme", key="executions:start", cost=1),
                        metadata=md("acme"),
                    )
                    for _ in range(7)
                ]
            assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
            assert not any(d.degraded for d in decisions)  # decided by Redis, over TLS
            [shard] = app.limiter.router.shards
            batcher = app.limiter.executor.batcher_for(shard)
            assert isinstance(batcher._conn, PipelinedConnection)  # the hot path, not redis-py
            assert batcher._conn._tls is not None
        finally:
            await running.stop(0)
            await app.close()

        other = TestCA(tmp_path / "other", "another-ca")
        for wrong in (
            url(port, other.cert, client.cert, client.key),  # the server is not from this CA
            url(port, ca.cert, client.cert, client.key, password="wrong"),  # ACL refuses
        ):
            conn = PipelinedConnection.for_client(make_client(wrong, 2000))
            assert conn is not None
            with pytest.raises(RedisConnectionError):
                await conn.connect()
            conn.close()
