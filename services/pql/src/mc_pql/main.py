"""Entry point of the provenance service: `mc-pql` (settings from `MC_PQL_*`)."""

from __future__ import annotations

import asyncio

from mc_common.server import serve
from mc_pql.app import PqlApp
from mc_pql.settings import PqlSettings


async def run(settings: PqlSettings) -> None:
    app = await PqlApp.create(settings)
    await serve(settings, app.spec(), on_stop=[app.close])


def main() -> None:
    asyncio.run(run(PqlSettings()))  # type: ignore[call-arg]


if __name__ == "__main__":
    main()
