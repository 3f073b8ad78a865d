"""gRPC status -> HTTP: the standard google.rpc code mapping and a `google.rpc.Status` body.

The body is the proto3 JSON form of `google.rpc.Status` (`code`, `message`, `details`), each
detail an `Any` with its `@type`, as Google APIs and grpc-gateway return it.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format
from google.rpc import status_pb2

from mc_common.errors import MCError

log = logging.getLogger("mc.gateway")

# google/rpc/code.proto, "HTTP Mapping" of each code.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
STATUS_DETAILS_KEY = "grpc-status-details-bin"


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def status_from_rpc_error(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The rich status of a failed call: its details when the server sent them."""
    code = error.code()
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # a peer's malformed trailer: fall back to code and message
                break
            if status.code == code.value[0]:
                return status
    return status_pb2.Status(code=code.value[0], message=error.details() or "")


def status_from_error(error: MCError) -> status_pb2.Status:
    """The status of a gateway-side domain error, with its details."""
    status = status_pb2.Status(code=error.grpc_code.value[0], message=error.message)
    for detail in error.details():
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


def status_json(status: status_pb2.Status) -> dict[str, Any]:
    """`google.rpc.Status` in proto3 JSON; details of types we cannot resolve are dropped."""
    out: dict[str, Any] = {"code": status.code, "message": status.message, "details": []}
    for detail in status.details:
        try:
            out["details"].append(json_format.MessageToDict(detail))
        except (TypeError, KeyError, json_format.Error):
            log.warning("dropped an error detail of unknown type", extra={"type": detail.type_url})
    return out


def code_of(status: status_pb2.Status) -> grpc.StatusCode:
    return _CODE_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
