"""Generic gRPC calls to the fleet: one multicallable per RPC, built from its message classes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message

from mc_common.identity import WorkloadIdentity
from mc_gateway.channels import open_channel, upstream_server
from mc_gateway.descriptors import Rpc


def resolve(upstreams: Mapping[str, str], service: str) -> str | None:
    """The address serving `service`: the entry naming it, or its longest package prefix."""
    key = resolve_key(upstreams, service)
    return None if key is None else upstreams[key]


def resolve_key(upstreams: Mapping[str, str], service: str) -> str | None:
    """The entry of `upstreams` serving `service` (the longest covering prefix)."""
    best: str | None = None
    for prefix in upstreams:
        covers = service == prefix or service.startswith(prefix + ".")
        if covers and (best is None or len(prefix) > len(best)):
            best = prefix
    return best


class Upstreams:
    """Channels by address (one each, shared) and multicallables by RPC."""

    def __init__(
        self,
        addresses: Mapping[str, str],
        identity: WorkloadIdentity,
        servers: Mapping[str, str] | None = None,
    ) -> None:
        self._addresses = dict(addresses)
        self._identity = identity
        self._servers = dict(servers or {})  # upstream key -> the workload it must be
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._unary: dict[str, Any] = {}
        self._stream: dict[str, Any] = {}

    def serves(self, service: str) -> bool:
        return resolve(self._addresses, service) is not None

    def _channel(self, rpc: Rpc) -> grpc.aio.Channel:
        key = resolve_key(self._addresses, rpc.service)
        if key is None:
            raise LookupError(f"no upstream for {rpc.service}")
        address = self._addresses[key]
        channel = self._channels.get(address)
        if channel is None:
            server = upstream_server(key, self._servers)
            channel = self._channels[address] = open_channel(self._identity, address, server)
        return channel

    async def unary(
        self, rpc: Rpc, request: Message, metadata: Sequence[tuple[str, str]], timeout_s: float
    ) -> Message:
        call = self._unary.get(rpc.grpc_path)
        if call is None:
            call = self._unary[rpc.grpc_path] = self._channel(rpc).unary_unary(
                rpc.grpc_path,
                request_serializer=_serialize,
                response_deserializer=rpc.output_type.FromString,
            )
        reply: Message = await call(request, metadata=tuple(metadata), timeout=timeout_s)
        return reply

    def server_stream(
        self, rpc: Rpc, request: Message, metadata: Sequence[tuple[str, str]], timeout_s: float
    ) -> AsyncIterator[Message]:
        call = self._stream.get(rpc.grpc_path)
        if call is None:
            call = self._stream[rpc.grpc_path] = self._channel(rpc).unary_stream(
                rpc.grpc_path,
                request_serializer=_serialize,
                response_deserializer=rpc.output_type.FromString,
            )
        stream: AsyncIterator[Message] = call(  # type: ignore[assignment]  # iterates replies
            request, metadata=tuple(metadata), timeout=timeout_s
        )
        return stream

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
