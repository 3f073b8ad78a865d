"""Child processes that never outlive their parent, and local ports.

Every local server MC starts (services, the Tansu broker, embedded Postgres and Redis) is
started with `die_with_parent()`: if the starting process dies, even by SIGKILL, the kernel
sends the child a signal (Linux `PR_SET_PDEATHSIG`), so nothing is left holding ports.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


class InfraError(RuntimeError):
    """A local dependency could not be started or reached; the message says which and why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on `host:port` right now."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """In a child process already running: receive `sig` when the parent dies (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def die_with_parent(
    sig: int = signal.SIGTERM, then: Callable[[], None] | None = None
) -> Callable[[], None]:
    """A `preexec_fn` that makes the child receive `sig` when its parent dies.

    The parent may die between fork and `prctl`; the child then exits at once rather than run
    orphaned. `then` runs afterwards in the child (for example dropping privileges).
    NOTE: Linux only; elsewhere children are stopped only by a clean shutdown.
    """
    parent = os.getpid()

    def preexec() -> None:
        # `then` first: the kernel clears the parent-death signal when the child changes its
        # credentials (setuid), so it is set after dropping privileges.
        if then is not None:
            then()
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
                os._exit(125)
            if os.getppid() != parent:
                os._exit(125)

    return preexec


def stop_process(process: subprocess.Popen[bytes], sig: int, timeout: float) -> bool:
    """Send `sig`, wait up to `timeout` s, then SIGKILL. True when it stopped by itself."""
    if process.poll() is not None:
        return True
    process.send_signal(sig)
    try:
        process.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
