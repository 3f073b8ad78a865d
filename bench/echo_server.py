"""A bare grpc.aio server answering any unary call with a default message: the baseline.

Usage: python bench/echo_server.py PORT (ECHO_REQUEST / ECHO_RESPONSE name the message types,
so requests are really decoded and responses really encoded, as the service under test does).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer


def _message(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


async def main(port: int) -> None:
    request_type = _message(os.environ["ECHO_REQUEST"])
    response_type = _message(os.environ["ECHO_RESPONSE"])
    reply = response_type()

    async def echo(request: Any, context: Any) -> Any:
        return reply

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
