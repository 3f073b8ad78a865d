"""Entry point of the provenance service: `mc-pql` (settings from `MC_PQL_*`).

With `MC_PQL_WORKERS=N` (N > 1) this process supervises N worker processes serving the same
port (SO_REUSEPORT), each with its own pool and chain writer. Chains stay linear across them as
across replicas (tenants' advisory locks); the kernel spreads connections over the workers, so
one client connection is served by one worker.
"""

from __future__ import annotations

import asyncio
import dataclasses

from mc_common import workers
from mc_common.logs import configure_logging
from mc_common.server import serve
from mc_pql.app import PqlApp, prepare_database
from mc_pql.settings import PqlSettings


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
    """Migrate once, then run `settings.workers` workers (`mc_common.workers.supervise`)."""
    configure_logging("mc-pql", settings.log_level)
    asyncio.run(prepare_database(settings))
    return workers.supervise("mc-pql", settings.workers, _worker)


def main() -> None:
    settings = PqlSettings()  # type: ignore[call-arg]
    if settings.workers > 1:
        raise SystemExit(supervise(settings))
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
