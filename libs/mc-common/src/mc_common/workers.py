"""Several server processes on one port (SO_REUSEPORT), supervised by one.

A service whose settings ask for `workers > 1` calls `supervise()` from its entry point with a
module-level `worker(index)` function that serves with `ServiceSpec(reuse_port=True)`; the
kernel spreads connections over the workers. Workers are spawned (gRPC does not survive fork)
and die with the supervisor even if it is killed (`PR_SET_PDEATHSIG`).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Callable
from multiprocessing.connection import wait
from types import FrameType

from mc_common.devinfra.process import set_parent_death_signal

log = logging.getLogger("mc.workers")


def _start_worker(worker: Callable[[int], None], index: int) -> None:
    set_parent_death_signal(signal.SIGTERM)
    worker(index)


def supervise(service: str, count: int, worker: Callable[[int], None]) -> int:
    """Run `count` workers (`worker(i)` in a spawned process each) until SIGTERM or SIGINT; the
    first worker to exit otherwise stops the others. Returns the exit code: 0 when every worker
    stopped cleanly. Call it with logging configured."""
    spawn = multiprocessing.get_context("spawn")
    workers = [
        spawn.Process(target=_start_worker, args=(worker, i), name=f"{service}-{i}")
        for i in range(count)
    ]
    for process in workers:
        process.start()
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:  # once: a second SIGTERM could land after a worker's own handler is gone
            stopping = True
            for process in workers:
                process.terminate()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    log.info("supervising", extra={"service": service, "workers": count})
    wait([w.sentinel for w in workers])
    stop(signal.SIGTERM, None)  # a worker stopped by itself: stop the others
    for process in workers:
        process.join()
    return max(abs(w.exitcode or 0) for w in workers)
