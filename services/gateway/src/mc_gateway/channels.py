"""The one place the gateway opens gRPC channels to other services.

Every outbound channel (upstreams and the limiter) comes from `open_channel`: mTLS with the
gateway's SVID (the one its own server uses), verifying that the peer is the workload named
`server` (ADR 0041), and following SVID rotation (`mc_common.identity`).
"""

from __future__ import annotations

import grpc

from mc_common.identity import WorkloadIdentity
from mc_common.server import MAX_MESSAGE_BYTES

_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
]


def open_channel(identity: WorkloadIdentity, address: str, server: str) -> grpc.aio.Channel:
    """A channel to `address`, which must prove it is `server` (a service name or SPIFFE ID),
    reused for every call the gateway makes there."""
    return identity.channel(address, server=server, options=_OPTIONS)


def upstream_server(key: str, overrides: dict[str, str]) -> str:
    """The workload an upstream must be: `overrides[key]`, else the package's service label
    (`mc.pql.v1` -> `pql`)."""
    if key in overrides:
        return overrides[key]
    parts = key.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "mc" else key
