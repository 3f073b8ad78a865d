"""Entry point of the gateway: `mc-gateway` (settings from `MC_GATEWAY_*`)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from mc_common.logs import configure_logging
from mc_gateway.app import start_gateway
from mc_gateway.settings import GatewaySettings

log = logging.getLogger("mc.gateway")


async def serve(settings: GatewaySettings) -> None:
    """Run the gateway until SIGTERM or SIGINT, then stop both servers gracefully."""
    configure_logging("mc-gateway", settings.log_level)
    gateway = await start_gateway(settings)
    log.info(
        "serving",
        extra={"http_port": gateway.http_port, "grpc_port": gateway.grpc.port},
    )
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_s": settings.shutdown_grace_s})
    await gateway.stop(settings.shutdown_grace_s)
    log.info("stopped")


def main() -> None:
    asyncio.run(serve(GatewaySettings()))


if __name__ == "__main__":
    main()
