"""Spreading counters over several Redis instances, and noticing when one of them is down.

Every counter key carries a hash tag (``{t:<tenant>}`` for tenant-level scopes,
``{g:<rule>}`` for cross-tenant global pools) and is routed on that tag by a consistent-hash
ring with virtual nodes, so adding a shard to N moves about 1/(N+1) of the tags (their
counters restart empty on the new shard: at worst one window of extra admissions for them).
All counters of one tenant share a tag, hence a shard, which is what lets one Lua call check
and consume tenant, token and key limits atomically. (The tag is Redis Cluster compatible,
so the same keys also work on a cluster.)

Each shard has a circuit breaker: the first connection error or check timeout trips it, checks
for its tags then go straight to the local fallback (no retries on the hot path), and a
background probe PINGs the shard every ``probe_interval`` until it answers, which closes the
breaker. A check times out only when the shard is not answering, not when it is busy: a script
call's deadline follows the work sent (``redis_client._Resp``: a budget per decision, counted
from when the calls ahead of it should be done) and any reply proves the shard alive. Slow
replies off the check path (region sync, refunds) never trip it (``trip_unless_slow``).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
from collections.abc import Callable, Iterable

from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, ReadOnlyError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mc_common.periodic import stop_task
from mc_limiter.redis_client import make_client

log = logging.getLogger(__name__)

# Errors that mean "this shard cannot answer now" (as opposed to a bug in a command).
SHARD_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    OSError,
    TimeoutError,
)


def trip_unless_slow(shard: Shard, exc: BaseException) -> None:
    """For calls off the check path (region sync, refunds): a refused or lost connection
    trips the shard's breaker, a slow reply does not (only the check path, whose deadlines
    follow the work it sends, decides that a slow shard is down)."""
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        log.info("shard %s answered slowly off the check path: %r", shard.name, exc)
    else:
        shard.trip(exc)


def hash64(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing with ``vnodes`` points per node on a 64-bit ring."""

    def __init__(self, nodes: Iterable[str] = (), vnodes: int = 160) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be >= 1")
        self._vnodes = vnodes
        self._points: list[int] = []
        self._owners: list[str] = []
        self._nodes: set[str] = set()
        for node in nodes:
            self.add(node)

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset(self._nodes)

    def add(self, node: str) -> None:
        if node in self._nodes:
            raise ValueError(f"node {node!r} already on the ring")
        self._nodes.add(node)
        for i in range(self._vnodes):
            point = hash64(f"{node}#{i}")
            at = bisect.bisect_left(self._points, point)
            self._points.insert(at, point)
            self._owners.insert(at, node)

    def remove(self, node: str) -> None:
        if node not in self._nodes:
            raise ValueError(f"node {node!r} is not on the ring")
        self._nodes.discard(node)
        kept = [(p, o) for p, o in zip(self._points, self._owners, strict=True) if o != node]
        self._points = [p for p, _ in kept]
        self._owners = [o for _, o in kept]

    def node_for(self, tag: str) -> str:
        if not self._points:
            raise LookupError("hash ring is empty")
        at = bisect.bisect_right(self._points, hash64(tag))
        return self._owners[at % len(self._owners)]


class CircuitBreaker:
    """Marks a shard down on the first failure and probes it in the background until it
    answers again. ``on_change(up)`` is called on each transition."""

    def __init__(
        self,
        name: str,
        client: Redis,
        probe_interval_ms: int,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.name = name
        self._client = client
        self._interval = probe_interval_ms / 1000
        self._on_change = on_change
        self._up = True
        self._probe: asyncio.Task[None] | None = None
        self._closed = False
        self.down_since: float | None = None

    @property
    def up(self) -> bool:
        return self._up

    def trip(self, reason: BaseException | None = None) -> None:
        if not self._up or self._closed:
            return
        self._up = False
        self.down_since = asyncio.get_running_loop().time()
        log.warning("shard %s marked down: %r", self.name, reason)
        if self._on_change:
            self._on_change(False)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_until_up(), name=f"probe-{self.name}")

    async def _probe_until_up(self) -> None:
        while not self._up and not self._closed:
            await asyncio.sleep(self._interval)
            try:
                await self._client.ping()
            except SHARD_UNAVAILABLE_ERRORS:
                continue
            self._up = True
            self.down_since = None
            log.warning("shard %s is back", self.name)
            if self._on_change:
                self._on_change(True)

    async def close(self) -> None:
        self._closed = True
        probe, self._probe = self._probe, None
        if probe is not None:
            await stop_task(probe)


class Shard:
    """One Redis instance of a region, with its breaker."""

    def __init__(self, name: str, client: Redis) -> None:
        self.name = name
        self.client = client
        self.breaker: CircuitBreaker | None = None

    @property
    def up(self) -> bool:
        return self.breaker is None or self.breaker.up

    def trip(self, reason: BaseException | None = None) -> None:
        if self.breaker is not None:
            self.breaker.trip(reason)

    @classmethod
    def from_url(cls, name: str, url: str, timeout_ms: int = 100) -> Shard:
        return cls(name, make_client(url, timeout_ms))


class ShardRouter:
    """Routes a hash tag to its shard. Shards can be added or removed at runtime."""

    def __init__(self, shards: Iterable[Shard], vnodes: int = 160) -> None:
        self._shards: dict[str, Shard] = {}
        self._ring = HashRing(vnodes=vnodes)
        self.generation = 0  # bumped whenever shards are added or removed
        for shard in shards:
            self.add(shard)
        if not self._shards:
            raise ValueError("at least one shard is required")

    @property
    def shards(self) -> list[Shard]:
        return list(self._shards.values())

    def add(self, shard: Shard) -> None:
        if shard.name in self._shards:
            raise ValueError(f"duplicate shard name {shard.name!r}")
        self._shards[shard.name] = shard
        self._ring.add(shard.name)
        self.generation += 1

    def remove(self, name: str) -> Shard:
        shard = self._shards.pop(name)
        self._ring.remove(name)
        self.generation += 1
        return shard

    def get(self, name: str) -> Shard:
        return self._shards[name]

    def shard_for(self, tag: str) -> Shard:
        return self._shards[self._ring.node_for(tag)]
