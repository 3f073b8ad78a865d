"""The limiter's hand-written Redis protocol (RESP) client for the check hot path.

redis-py's asyncio client spends more CPU per call (pool checkout, retry wrapper, timeout
scopes, hooks, a Python command packer) than Redis spends running a batch of checks. This
module holds what replaces it where it matters: RESP encoding done once per limit
(``resp``, ``Packed``), commands packed by hiredis (``HiredisPackedConnection``), and a
pipelined connection that hands each reply, parsed by hiredis, to a callback
(``PipelinedConnection``, over TCP or TLS), with ``ClientRoundtrip`` as the same interface over
redis-py for what it does not speak (Unix sockets). ``make_client`` builds the redis-py client
tuned for the hot path (short timeouts, no retries) that everything else uses.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.asyncio import Connection, Redis
from redis.asyncio.connection import SSLConnection
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

__all__ = [
    "ClientRoundtrip",
    "HiredisPackedConnection",
    "OnReply",
    "Packed",
    "PipelinedConnection",
    "hot_path_connection",
    "make_client",
    "resp",
    "resp_int",
]


def resp(*values: str | int) -> bytes:
    """``values`` as RESP bulk strings: a command is ``*<count>`` and then these."""
    out = []
    for value in values:
        data = value.encode() if isinstance(value, str) else str(value).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


_SMALL = [resp(n) for n in range(1025)]


def resp_int(n: int) -> bytes:
    """``resp(n)``, with the usual small numbers (costs, counts) encoded once."""
    return _SMALL[n] if 0 <= n < len(_SMALL) else resp(n)


@dataclass(frozen=True, slots=True)
class Packed:
    """Part of a command encoded once (``count`` RESP bulk strings): the hot path reuses
    the encoding of each limit's KEYS and ARGV instead of packing them on every call."""

    data: bytes
    count: int

    @classmethod
    def of(cls, values: Sequence[str | int]) -> Packed:
        return cls(resp(*values), len(values))


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

    Timeouts use one watchdog timer for the oldest waiting call, not a timer per call. A
    call's deadline follows the work sent, so a busy but healthy server is never declared
    down: Redis runs pipelined calls one after another, so a call is expected to be done
    ``work_s`` after the calls ahead of it are (``_busy_until``), and its deadline is that
    plus ``timeout``. And any reply proves the server alive: the oldest call is overdue only
    when, past its deadline, nothing at all has arrived for ``timeout``. With ``adaptive``
    off (a work budget of 0) every call has the fixed ``timeout`` from its send instead (the
    old behaviour, which declared busy shards down; kept for comparison in the benchmark)."""

    def __init__(self, adaptive: bool = True) -> None:
        self._adaptive = adaptive
        self._reader = hiredis.Reader(replyError=_reply_error)
        # callback, deadline, timeout
        self._waiting: deque[tuple[OnReply, float, float]] = deque()
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._busy_until = 0.0  # when the work sent so far is expected to be done
        self._last_reply = 0.0
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def send(
        self, packed: bytes, on_reply: OnReply, timeout: float | None, work_s: float = 0.0
    ) -> None:
        assert self._transport is not None
        self._transport.write(packed)
        if timeout is None:
            self._waiting.append((on_reply, math.inf, math.inf))
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._adaptive:
            self._busy_until = max(now, self._busy_until) + work_s
            deadline = self._busy_until + timeout
        else:
            deadline = now + timeout
        self._waiting.append((on_reply, deadline, timeout))
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._watch)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        got = False
        while (reply := self._reader.gets()) is not False:
            got = True
            self._waiting.popleft()[0](reply)
        if got:
            self._last_reply = asyncio.get_running_loop().time()
            if not self._waiting:
                self._busy_until = 0.0  # nothing queued: the next call starts from now

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to redis lost: {exc!r}"))

    def _watch(self) -> None:
        """Fail the connection if its oldest call is overdue, else look again when the
        oldest call (which may be a newer one by now) is due."""
        self._watchdog = None
        if not self._waiting or self.lost:
            return
        loop = asyncio.get_running_loop()
        _, deadline, timeout = self._waiting[0]
        due = max(deadline, self._last_reply + timeout) if self._adaptive else deadline
        if due <= loop.time():
            self.fail(RedisTimeoutError("timeout reading from redis"))
        elif due != math.inf:
            self._watchdog = loop.call_at(due, self._watch)

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
    (``ConnectionError``); ``connect()`` opens a new one. TCP or TLS (``rediss://``, with the
    CA, client certificate and host name checks of the client's URL); AUTH (ACL user and
    password) and SELECT are sent on connect.
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
        work_timeout: float = 0.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._address = (host, port)
        self._tls = tls
        self._setup: list[tuple[Any, ...]] = []
        if password is not None:
            self._setup.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._setup.append(("SELECT", db))
        self._timeout = timeout
        self._work_timeout = work_timeout
        self._connect_timeout = connect_timeout
        self._resp: _Resp | None = None
        self._opening: asyncio.Future[_Resp] | None = None

    @classmethod
    def for_client(cls, client: Redis, work_timeout: float = 0.0) -> PipelinedConnection | None:
        """A connection to the same server as ``client``, if that is TCP or TLS; a call of
        ``work`` units gets ``work * work_timeout`` seconds on top of the socket timeout."""
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        tls: ssl.SSLContext | None = None
        if issubclass(pool.connection_class, SSLConnection):
            tls = tls_context(kwargs)
        elif pool.connection_class not in (Connection, HiredisPackedConnection):
            return None  # a Unix socket, or something else this does not speak
        return cls(
            kwargs.get("host", "localhost"),
            int(kwargs.get("port", 6379)),
            db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            timeout=kwargs.get("socket_timeout"),
            connect_timeout=kwargs.get("socket_connect_timeout"),
            work_timeout=work_timeout,
            tls=tls,
        )

    @property
    def connected(self) -> bool:
        return self._resp is not None and not self._resp.lost

    def send(self, packed: bytes, on_reply: OnReply, work: int = 1) -> None:
        """Write one packed command now (requires ``connected``); ``on_reply`` gets its
        reply. ``work`` (decisions in the call) extends its deadline (see ``_Resp``)."""
        assert self._resp is not None
        self._resp.send(packed, on_reply, self._timeout, work * self._work_timeout)

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
                host, port = self._address
                protocol = lambda: _Resp(adaptive=self._work_timeout > 0)  # noqa: E731
                if self._tls is None:
                    _, resp = await loop.create_connection(protocol, host, port)
                else:
                    _, resp = await loop.create_connection(
                        protocol, host, port, ssl=self._tls, server_hostname=host
                    )
                for command in self._setup:
                    future: asyncio.Future[Any] = loop.create_future()
                    resp.send(bytes(hiredis.pack_command(command)), _into(future), None)
                    await future
        except (OSError, ResponseError) as exc:  # TimeoutError and ssl.SSLError are OSErrors
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

    def send(self, packed: bytes, on_reply: OnReply, work: int = 1) -> None:
        """Each call has a pooled connection of its own (no work queued ahead of it): the
        client's socket timeout applies as is."""

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


_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def tls_context(kwargs: dict[str, Any]) -> ssl.SSLContext:
    """The client TLS context redis-py would use for these ``rediss://`` connection kwargs
    (``ssl_ca_certs``, ``ssl_ca_path``, ``ssl_ca_data``, ``ssl_certfile``, ``ssl_keyfile``,
    ``ssl_password``, ``ssl_cert_reqs``, ``ssl_check_hostname``), so the hot path checks the
    server exactly as the rest of the limiter does."""
    reqs = kwargs.get("ssl_cert_reqs", "required")
    mode = _CERT_REQS[reqs.lower()] if isinstance(reqs, str) else ssl.VerifyMode(reqs)
    context = ssl.create_default_context(
        cafile=kwargs.get("ssl_ca_certs"),
        capath=kwargs.get("ssl_ca_path"),
        cadata=kwargs.get("ssl_ca_data"),
    )
    context.check_hostname = bool(kwargs.get("ssl_check_hostname", True)) and (
        mode != ssl.CERT_NONE
    )
    context.verify_mode = mode
    if kwargs.get("ssl_certfile"):
        context.load_cert_chain(
            kwargs["ssl_certfile"], kwargs.get("ssl_keyfile"), kwargs.get("ssl_password")
        )
    return context


def hot_path_connection(
    client: Redis, work_timeout: float = 0.0
) -> PipelinedConnection | ClientRoundtrip:
    """Where a shard's checks go: a ``PipelinedConnection`` to the same server as ``client``
    when it is TCP or TLS, else ``client`` itself."""
    return PipelinedConnection.for_client(client, work_timeout) or ClientRoundtrip(client)


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
