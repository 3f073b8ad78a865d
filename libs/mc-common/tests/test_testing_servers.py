"""The shared test fixtures: throw-away Redis, waiting for SERVING, a server with its stub."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mc_common import devinfra
from mc_common.server import ServiceSpec
from mc_common.testing.identity import TestTrustDomain
from mc_common.testing.servers import ThrowawayRedis, server_and_stub, wait_for_serving


def test_throwaway_redis_dies_and_comes_back_empty_on_its_port() -> None:
    redis = ThrowawayRedis()
    redis.start()
    try:
        assert devinfra.redis_reachable("127.0.0.1", redis.port)
        redis.kill()
        assert not devinfra.redis_reachable("127.0.0.1", redis.port)
        redis.start()
        assert devinfra.redis_url_reachable(redis.url)
    finally:
        redis.kill()


async def test_a_server_and_its_stub_report_serving(mc_trust_domain: TestTrustDomain) -> None:
    spec = ServiceSpec(name="test", service_names=[], register=lambda server: None)
    stub = server_and_stub(spec, health_pb2_grpc.HealthStub, channel=mc_trust_domain.channel)
    async with stub as health:
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_waiting_fails_early_when_the_process_exits() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait(30)
    address = f"127.0.0.1:{devinfra.free_port()}"
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(AssertionError, match="exited with 3 before serving"):
            await wait_for_serving(channel, process=process, deadline_s=60)
