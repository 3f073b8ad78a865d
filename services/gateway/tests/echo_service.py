"""The test-only EchoService: compiled from tests/protos at run time and served with generic
handlers built from the descriptor set's own message classes (no generated code)."""

from __future__ import annotations

import asyncio
import sysconfig
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from mc_common.errors import NotFound
from mc_common.identity import WorkloadIdentity
from mc_gateway.descriptors import Api, load_api

HERE = Path(__file__).parent
SERVICE = "mc.gatewaytest.v1.EchoService"


def compile_descriptor_set(out: Path) -> Path:
    """protoc (grpcio-tools) the echo proto, with its imports, into a descriptor set."""
    import grpc_tools
    from grpc_tools import protoc

    site = Path(sysconfig.get_paths()["purelib"])
    args = [
        "grpc_tools.protoc",
        f"-I{HERE / 'protos'}",
        f"-I{site}",  # google/api/*.proto from googleapis-common-protos
        f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
        "--include_imports",
        "--include_source_info",
        f"--descriptor_set_out={out}",
        "mc/gatewaytest/v1/echo.proto",
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on the echo proto")
    return out


async def start_echo_server(api: Api, identity: WorkloadIdentity) -> tuple[grpc.aio.Server, str]:
    """The echo service on a free port, serving mTLS as the workload of `identity`."""
    rpcs = {r.name: r for r in api.services[SERVICE]}
    thing_cls = rpcs["GetThing"].output_type
    echo_cls = rpcs["Echo"].output_type

    def echo(request: Message, context: Any) -> Message:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        return echo_cls(request=json_format.MessageToJson(request), metadata=metadata)

    async def get_thing(request: Any, context: Any) -> Message:
        if request.name.endswith("/missing"):
            await context.abort_with_status(NotFound(f"{request.name} not found").to_status())
        return thing_cls(name=request.name, size=7)

    async def update_thing(request: Any, context: Any) -> Message:
        return rpcs["UpdateThing"].output_type(thing=request.thing, note="updated")

    async def echo_rpc(request: Any, context: Any) -> Message:
        if request.sleep_ms:
            await asyncio.sleep(request.sleep_ms / 1000)
        return echo(request, context)

    async def search(request: Any, context: Any) -> Message:
        return echo(request, context)

    async def watch(request: Any, context: Any) -> AsyncIterator[Message]:
        for i in range(request.count):
            if request.fail_after_first and i == 1:
                await context.abort_with_status(NotFound("the watch ended").to_status())
            yield thing_cls(name=f"{request.parent}/things/t{i}", size=i)

    def unary(fn: Any, rpc: str) -> grpc.RpcMethodHandler:  # type: ignore[type-arg]
        r = rpcs[rpc]
        return grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=r.input_type.FromString,
            response_serializer=r.output_type.SerializeToString,
        )

    handlers = {
        "GetThing": unary(get_thing, "GetThing"),
        "UpdateThing": unary(update_thing, "UpdateThing"),
        "Echo": unary(echo_rpc, "Echo"),
        "Search": unary(search, "Search"),
        "Watch": grpc.unary_stream_rpc_method_handler(
            watch,
            request_deserializer=rpcs["Watch"].input_type.FromString,
            response_serializer=rpcs["Watch"].output_type.SerializeToString,
        ),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = identity.add_port(server, "127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def load_echo_api(path: Path) -> Api:
    return load_api(compile_descriptor_set(path))
