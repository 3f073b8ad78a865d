"""Driving `maestro dev up` as a user would: a child process whose output lines we wait for."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

MAESTRO = [sys.executable, "-m", "maestro_cli.main"]


class DevUp:
    """A running `maestro dev up`; `lines` holds everything it printed so far."""

    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        # Free ports: other fleets may run on this machine at the same time.
        self.process = subprocess.Popen(
            [*MAESTRO, "dev", "up", "--any-ports", *args],
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, needle: str, timeout: float = 300) -> str:
        """The first line containing `needle`; fails if the process ends or time runs out."""
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if needle in line:
                return line
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"dev up ended before {needle!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if needle in line:
                return line
        raise AssertionError(f"no {needle!r} within {timeout}s:\n" + "\n".join(self.lines))

    def finish(self, timeout: float = 120) -> int:
        """Wait for the process to end and collect the rest of its output."""
        code = self.process.wait(timeout)
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.lines.append(line)
        return code

    def pid_of(self, service: str) -> int:
        """The pid `dev up` printed for `service` when it started it."""
        line = self.wait_for(f"starting {service} (pid ")
        return int(line.rsplit("pid ", 1)[1].rstrip(")"))


def fleet_env(pg_admin_dsn: str, database: str, redis_prefix: str) -> dict[str, str]:
    """The environment of a test fleet: the session's Postgres, its own database and keys."""
    env = {
        **os.environ,
        "MC_POSTGRES_DSN": pg_admin_dsn,
        "MC_DEV_DATABASE": database,
        "MC_LIMITER_KEY_PREFIX": f"{redis_prefix}rl",
        "MC_LIMITER_FAIRSHARE_KEY_PREFIX": f"{redis_prefix}fs",
    }
    env.pop("MC_KAFKA_BOOTSTRAP", None)
    return env


def await_condition(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.05)


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
