"""Entry point of the edge policy service: `mc-edge-policy` (settings from `MC_EDGE_POLICY_*`)."""

from __future__ import annotations

import asyncio

from mc_common.server import serve
from mc_edge_policy.app import EdgePolicyApp
from mc_edge_policy.settings import EdgePolicySettings


async def run(settings: EdgePolicySettings) -> None:
    app = await EdgePolicyApp.create(settings)
    await serve(settings, app.spec(), on_stop=[app.close])


def main() -> None:
    asyncio.run(run(EdgePolicySettings()))


if __name__ == "__main__":
    main()
