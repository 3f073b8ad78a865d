"""Spreading counters over several Redis instances, and noticing when one of them is down.

Every counter key carries a hash tag (``{t:<tenant>}`` for tenant-level scopes,
``{g:<rule>}`` for cross-tenant global pools) and is routed on that tag by a consistent-hash
ring with virtual nodes, so adding a shard to N moves about 1/(N+1) of the tags (their
counters restart empty on the new shard: at worst one window of extra admissions for them).
All counters of one tenant share a tag, hence a shard, which is what lets one Lua call check
and consume tenant, token and key limits atomically. (The tag is Redis Cluster compatible,
so the same keys also work on a cluster.)

Each shard has a circuit breaker: the first connection error or timeout trips it, checks for
its tags then go straight to the local fallback (no retries on the hot path), and a background
probe PINGs the shard every ``probe_interval`` until it answers, which closes the breaker.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import hiredis
from redis.asyncio import Connection, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mc_limiter.periodic import stop_task

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


class HiredisPackedConnection(Connection):
    """A TCP connection that packs commands with hiredis (C) instead of redis-py's Python
    packer: each decision is one EVALSHA with ~20 arguments, and packing them in Python cost
    more than the Redis round trip."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return [_pack(args)]

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        return [b"".join(_pack(tuple(c)) for c in commands)]


def _pack(args: tuple[Any, ...]) -> bytes:
    # Like redis-py: a command name with spaces ("SCRIPT LOAD") is several arguments.
    if isinstance(args[0], str) and " " in args[0]:
        args = (*args[0].split(), *args[1:])
    return bytes(hiredis.pack_command(args))


_REPLY_ERRORS: dict[str, type[Exception]] = {
    "NOSCRIPT": NoScriptError,
    "LOADING": BusyLoadingError,
    "READONLY": ReadOnlyError,
}


def _reply_error(message: str) -> Exception:
    return _REPLY_ERRORS.get(message.split(" ", 1)[0], ResponseError)(message)


# Receives a reply: the value, or an exception for an error reply or a failed connection.
OnReply = Callable[[Any], None]


class _Resp(asyncio.Protocol):
    """RESP over one TCP connection: each reply goes to the oldest waiting callback.

    Timeouts use one watchdog timer for the oldest waiting call, not a timer per call."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=_reply_error)
        self._waiting: deque[tuple[OnReply, float]] = deque()  # callback, deadline
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def send(self, packed: bytes, on_reply: OnReply, timeout: float | None) -> None:
        assert self._transport is not None
        self._transport.write(packed)
        if timeout is None:
            self._waiting.append((on_reply, math.inf))
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._waiting.append((on_reply, deadline))
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._watch)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            self._waiting.popleft()[0](reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to redis lost: {exc!r}"))

    def _watch(self) -> None:
        """Fail the connection if its oldest call is overdue, else look again when the
        oldest call (which may be a newer one by now) is due."""
        self._watchdog = None
        if not self._waiting or self.lost:
            return
        loop = asyncio.get_running_loop()
        deadline = self._waiting[0][1]
        if deadline <= loop.time():
            self.fail(RedisTimeoutError("timeout reading from redis"))
        elif deadline != math.inf:
            self._watchdog = loop.call_at(deadline, self._watch)

    def fail(self, error: Exception) -> None:
        """Fail every waiting call and drop the connection (later replies could no longer be
        matched to their calls)."""
        self._give_up()
        if self._transport is not None:
            self._transport.abort()
        while self._waiting:
            self._waiting.popleft()[0](error)

    def close(self) -> None:
        self._give_up()
        if self._transport is not None:
            self._transport.close()

    def _give_up(self) -> None:
        self.lost = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None


def _into(future: asyncio.Future[Any]) -> OnReply:
    def settle(reply: Any) -> None:
        if future.done():
            return
        if isinstance(reply, Exception):
            future.set_exception(reply)
        else:
            future.set_result(reply)

    return settle


class PipelinedConnection:
    """A lean connection for the hot path's one command (EVALSHA of the check script).

    redis-py's asyncio client spends more CPU on a call (pool checkout, retry wrapper, two
    timeout scopes, hooks) than Redis spends running a batch of checks. This writes packed
    commands to the transport and hands each reply, parsed by hiredis, to a callback from
    ``data_received``: no task or future per call, one timer. Calls may be pipelined. A call
    not answered within ``timeout`` fails the connection (every waiting call gets
    ``TimeoutError``: later replies could no longer be matched), as does a lost connection
    (``ConnectionError``); ``connect()`` opens a new one. Plain TCP only (see
    ``for_client``); AUTH and SELECT are sent on connect.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float | None = 0.1,
        connect_timeout: float | None = 0.1,
    ) -> None:
        self._address = (host, port)
        self._setup: list[tuple[Any, ...]] = []
        if password is not None:
            self._setup.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._setup.append(("SELECT", db))
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._resp: _Resp | None = None
        self._opening: asyncio.Future[_Resp] | None = None

    @classmethod
    def for_client(cls, client: Redis) -> PipelinedConnection | None:
        """A connection to the same server as ``client``, if that is plain TCP."""
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        if pool.connection_class not in (Connection, HiredisPackedConnection):
            return None  # TLS, a Unix socket, or something else this does not speak
        return cls(
            kwargs.get("host", "localhost"),
            int(kwargs.get("port", 6379)),
            db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            timeout=kwargs.get("socket_timeout"),
            connect_timeout=kwargs.get("socket_connect_timeout"),
        )

    @property
    def connected(self) -> bool:
        return self._resp is not None and not self._resp.lost

    def send(self, packed: bytes, on_reply: OnReply) -> None:
        """Write one packed command now (requires ``connected``); ``on_reply`` gets its
        reply."""
        assert self._resp is not None
        self._resp.send(packed, on_reply, self._timeout)

    async def roundtrip(self, commands: list[bytes]) -> list[Any]:
        """Send packed commands pipelined; their replies, with an exception in place of a
        reply for an error reply or a failed connection (which fails every command)."""
        if not self.connected:
            await self.connect()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        for command, future in zip(commands, futures, strict=True):
            self.send(command, _into(future))
        return list(await asyncio.gather(*futures, return_exceptions=True))

    async def connect(self) -> None:
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        opening = self._opening
        try:
            self._resp = await asyncio.shield(opening)
        finally:
            if opening.done() and self._opening is opening:
                self._opening = None

    async def _open(self) -> _Resp:
        loop = asyncio.get_running_loop()
        resp: _Resp | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, resp = await loop.create_connection(_Resp, *self._address)
                for command in self._setup:
                    future: asyncio.Future[Any] = loop.create_future()
                    resp.send(bytes(hiredis.pack_command(command)), _into(future), None)
                    await future
        except (OSError, ResponseError) as exc:  # TimeoutError is an OSError
            if resp is not None:
                resp.close()
            where = f"redis at {self._address[0]}:{self._address[1]}"
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"timeout connecting to {where}") from exc
            raise RedisConnectionError(f"cannot connect to {where}: {exc}") from exc
        return resp

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
        self._resp = None


class ClientRoundtrip:
    """``PipelinedConnection``'s interface over a redis-py client, for what that does not
    speak (TLS, Unix sockets): a task and a pooled connection per call."""

    connected = True

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._tasks: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        """The client connects on demand."""

    def send(self, packed: bytes, on_reply: OnReply) -> None:
        async def call() -> None:
            try:
                (reply,) = await self.roundtrip([packed])
            except Exception as exc:
                reply = exc
            on_reply(reply)

        task = asyncio.get_running_loop().create_task(call())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def roundtrip(self, commands: list[bytes]) -> list[Any]:
        pool = self._client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(b"".join(commands), check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    def close(self) -> None:
        """The client's owner closes it."""


def hot_path_connection(client: Redis) -> PipelinedConnection | ClientRoundtrip:
    """Where a shard's checks go: a ``PipelinedConnection`` to the same server as ``client``
    when it is plain TCP, else ``client`` itself."""
    return PipelinedConnection.for_client(client) or ClientRoundtrip(client)


def make_client(url: str, timeout_ms: int = 100) -> Redis:
    """A client tuned for the hot path: short socket timeouts and no retries, so a dead
    shard costs one timeout at most before its breaker trips."""
    timeout = timeout_ms / 1000
    extra: dict[str, Any] = {}
    if url.startswith("redis://"):
        extra["connection_class"] = HiredisPackedConnection
    client: Redis = Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        **extra,
    )
    return client


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
