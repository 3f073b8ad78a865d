"""Entry point of the edge policy service: `mc-edge-policy` (settings from `MC_EDGE_POLICY_*`).

With `MC_EDGE_POLICY_WORKERS=N` (N > 1) this process supervises N worker processes serving
the same port (SO_REUSEPORT, `mc_common.workers`): a decision is CPU-bound in the evaluator, so
one process is one core. Each worker bootstraps from the shared cache directory, polls the
origins and publishes its decisions itself; worker i serves metrics on metrics_port + i.
"""

from __future__ import annotations

import asyncio
import dataclasses

from mc_common import workers
from mc_common.logs import configure_logging
from mc_common.server import serve
from mc_edge_policy.app import EdgePolicyApp
from mc_edge_policy.settings import EdgePolicySettings


async def run(settings: EdgePolicySettings, *, share_port: bool = False) -> None:
    app = await EdgePolicyApp.create(settings)
    spec = dataclasses.replace(app.spec(), reuse_port=share_port)
    await serve(settings, spec, on_stop=[app.close])


def _worker(index: int) -> None:
    settings = EdgePolicySettings()  # the same environment as the supervisor
    if settings.metrics_port is not None:  # one side port per worker
        settings = settings.model_copy(update={"metrics_port": settings.metrics_port + index})
    asyncio.run(run(settings, share_port=True))


def main() -> None:
    settings = EdgePolicySettings()
    if settings.workers > 1:
        configure_logging("mc-edge-policy", settings.log_level)
        raise SystemExit(workers.supervise("mc-edge-policy", settings.workers, _worker))
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
