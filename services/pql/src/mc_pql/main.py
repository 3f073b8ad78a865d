"""Entry point of the provenance service: `mc-pql` (settings from `MC_PQL_*`).

With `MC_PQL_WORKERS=N` (N > 1) this process supervises N worker processes serving the same
port (SO_REUSEPORT), each with its own pool and chain writer. Chains stay linear across them as
across replicas (tenants' advisory locks); the kernel spreads connections over the workers, so
one client connection is served by one worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import signal
from multiprocessing.connection import wait
from types import FrameType

from mc_common.logs import configure_logging
from mc_common.server import serve
from mc_pql.app import PqlApp, prepare_database
from mc_pql.settings import PqlSettings

log = logging.getLogger("mc.pql")


async def run(settings: PqlSettings, *, share_port: bool = False) -> None:
    app = await PqlApp.create(settings)
    spec = dataclasses.replace(app.spec(), reuse_port=share_port)
    await serve(settings, spec, on_stop=[app.close])


def _worker(index: int) -> None:
    settings = PqlSettings()  # type: ignore[call-arg]  # the same environment as the supervisor
    if settings.metrics_port is not None:  # one side port per worker
        settings = settings.model_copy(update={"metrics_port": settings.metrics_port + index})
    asyncio.run(run(settings, share_port=True))


def supervise(settings: PqlSettings) -> int:
    """Run `settings.workers` workers until SIGTERM or SIGINT; the first worker to exit
    otherwise stops the others. Returns the exit code: 0 when every worker stopped cleanly."""
    configure_logging("mc-pql", settings.log_level)
    asyncio.run(prepare_database(settings))
    spawn = multiprocessing.get_context("spawn")  # gRPC does not survive fork
    workers = [
        spawn.Process(target=_worker, args=(i,), name=f"mc-pql-{i}")
        for i in range(settings.workers)
    ]
    for worker in workers:
        worker.start()
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:  # once: a second SIGTERM could land after a worker's own handler is gone
            stopping = True
            for worker in workers:
                worker.terminate()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    log.info("supervising", extra={"workers": settings.workers, "port": settings.grpc_port})
    wait([w.sentinel for w in workers])
    stop(signal.SIGTERM, None)  # a worker stopped by itself: stop the others
    for worker in workers:
        worker.join()
    return max(abs(w.exitcode or 0) for w in workers)


def main() -> None:
    settings = PqlSettings()  # type: ignore[call-arg]
    if settings.workers > 1:
        raise SystemExit(supervise(settings))
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
