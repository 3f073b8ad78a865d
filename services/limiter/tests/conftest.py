"""Fixtures for the limiter tests: the machine's Redis with a unique key prefix per test, extra
``redis-server`` processes on free ports (for sharding, outages and regions), and a factory
for started ``Limiter`` instances that are closed at teardown."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from mc_common import devinfra
from mc_common.testing.servers import ThrowawayRedis
from mc_limiter.limiter import Limiter, LimiterOptions
from mc_limiter.regions import RegionPeer
from mc_limiter.sharding import Shard, ShardRouter


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess(ThrowawayRedis):
    """A throw-away ``redis-server`` that tests can kill and restart (mc_common.testing)."""


@pytest.fixture
def redis_servers() -> Iterator[Callable[[], RedisProcess]]:
    """Factory: ``redis_servers()`` starts a new redis-server on a free port."""
    started: list[RedisProcess] = []

    def start() -> RedisProcess:
        server = RedisProcess(_free_port())
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def shared_redis(prefix: str) -> AsyncIterator[Redis]:
    """A client on the session's Redis (configured, the machine's, else embedded: never a skip);
    deletes this test's keys (``<prefix>*``) afterwards."""
    client = Redis.from_url(devinfra.redis_url())
    await client.ping()
    yield client
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        await client.delete(key)
    await client.aclose()


MakeLimiter = Callable[..., Awaitable[Limiter]]


@pytest.fixture
async def make_limiter(prefix: str, shared_redis: Redis) -> AsyncIterator[MakeLimiter]:
    """Factory for started limiters, closed at teardown.

    ``urls``: this region's shards (default: the shared Redis); ``peers``: other regions as
    ``(name, urls)``; ``timeout_ms``: socket timeout (generous by default so a loaded machine
    does not trip breakers in tests that are not about outages); ``options``:
    ``LimiterOptions`` fields (``key_prefix`` defaults to the test's prefix); further keyword
    arguments go to ``Limiter`` (metrics, sinks, rng).
    """
    limiters: list[Limiter] = []
    clients: list[Redis] = []

    def shards_for(urls: Sequence[str], timeout_ms: int) -> list[Shard]:
        shards = [Shard.from_url(f"s{i}", url, timeout_ms) for i, url in enumerate(urls)]
        clients.extend(s.client for s in shards)
        return shards

    async def make(
        urls: Sequence[str] | None = None,
        *,
        peers: Sequence[tuple[str, Sequence[str]]] = (),
        timeout_ms: int = 1000,
        options: dict[str, Any] | None = None,
        **limiter_kwargs: Any,
    ) -> Limiter:
        fields = {"key_prefix": prefix, **(options or {})}
        limiter_options = LimiterOptions(**fields)
        region_peers = [
            RegionPeer(name, ShardRouter(shards_for(peer_urls, timeout_ms)), fields["key_prefix"])
            for name, peer_urls in peers
        ]
        limiter = Limiter(
            shards_for(urls or [devinfra.redis_url()], timeout_ms),
            options=limiter_options,
            peers=region_peers,
            **limiter_kwargs,
        )
        await limiter.start()
        limiters.append(limiter)
        return limiter

    yield make
    for limiter in limiters:
        await limiter.close()
    for client in clients:
        await client.aclose()
