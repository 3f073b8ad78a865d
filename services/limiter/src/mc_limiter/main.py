"""Entry point of the limiter service: `mc-limiter` (settings from `MC_LIMITER_*`)."""

from __future__ import annotations

import asyncio

from mc_common.server import serve
from mc_limiter.app import LimiterApp
from mc_limiter.settings import LimiterSettings


async def run(settings: LimiterSettings) -> None:
    app = await LimiterApp.create(settings)
    await serve(settings, app.spec(), on_stop=[app.close])


def main() -> None:
    asyncio.run(run(LimiterSettings()))


if __name__ == "__main__":
    main()
