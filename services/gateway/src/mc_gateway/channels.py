"""The one place the gateway opens gRPC channels to other services.

Every outbound channel (upstreams and the limiter) comes from `open_channel`, so that moving the
fleet to mTLS changes this function only.
"""

from __future__ import annotations

import grpc

from mc_common.server import MAX_MESSAGE_BYTES

_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
]


def open_channel(address: str) -> grpc.aio.Channel:
    """A channel to `address`, reused for every call the gateway makes there."""
    return grpc.aio.insecure_channel(address, options=_OPTIONS)
