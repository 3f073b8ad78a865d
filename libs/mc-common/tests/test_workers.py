"""The multi-process supervisor: workers start, stop with it, and die with it if it is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

WORKER = """
import os, signal, sys, time
from pathlib import Path

def work(index):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    Path(sys.argv[1], f"{index}.pid").write_text(str(os.getpid()))
    while not stop:
        time.sleep(0.05)
"""

SUPERVISOR = """
import sys
sys.path.insert(0, sys.argv[2])
from worker import work
from mc_common.workers import supervise
sys.exit(supervise("test", 2, work))
"""


def start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    (tmp_path / "worker.py").write_text(WORKER)
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(pids_dir), str(tmp_path)],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while len(list(pids_dir.glob("*.pid"))) < 2:
        assert supervisor.poll() is None, supervisor.stderr.read() if supervisor.stderr else ""
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)
    return supervisor, [int(p.read_text()) for p in pids_dir.glob("*.pid")]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie waiting for its reaper is gone too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def await_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 60
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"workers {pids} outlived the supervisor"
        time.sleep(0.05)


def test_sigterm_stops_every_worker_cleanly(tmp_path: Path) -> None:
    supervisor, pids = start(tmp_path)

    supervisor.send_signal(signal.SIGTERM)

    assert supervisor.wait(60) == 0
    await_gone(pids)


def test_workers_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    supervisor, pids = start(tmp_path)

    supervisor.kill()
    supervisor.wait(60)

    await_gone(pids)
