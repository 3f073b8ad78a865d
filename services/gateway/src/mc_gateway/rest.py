"""The REST front door (an ASGI app): authenticate, rate-limit, transcode, call, render.

Streaming RPCs answer newline-delimited JSON (`application/x-ndjson`, one `{"result": ...}`
per message and a final `{"error": <google.rpc.Status>}` if the stream fails), or Server-Sent
Events when the client asks for `text/event-stream`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import Internal, InvalidArgument, MCError, NotFound, PermissionDenied
from mc_common.tenancy import PRINCIPAL_HEADER, TENANT_HEADER
from mc_gateway import errors, transcode
from mc_gateway.authn import Authenticator, AuthError, Identity
from mc_gateway.callctx import REQUEST_ID_HEADER, CallContext, build_call_context
from mc_gateway.descriptors import ACCESS_INTERNAL, ACCESS_OPERATOR, Binding
from mc_gateway.ratelimit import DoorLimiter, denial
from mc_gateway.routing import MethodNotAllowed, Router
from mc_gateway.settings import GatewaySettings
from mc_gateway.upstream import Upstreams

log = logging.getLogger("mc.gateway")
MAX_QUERY_FIELDS = 100
TENANT_FIELD = "tenant"


@dataclass
class Door:
    """Everything a request passes through, in order."""

    settings: GatewaySettings
    router: Router
    authenticator: Authenticator
    upstreams: Upstreams
    limiter: DoorLimiter | None
    openapi: Callable[[], dict[str, Any]]

    async def handle(self, request: Request) -> Response:
        headers: dict[str, str] = {}
        try:
            ctx = build_call_context(
                request.headers, self.settings.default_timeout_s, self.settings.max_timeout_s
            )
        except MCError as exc:
            return _error_response(exc, headers)
        headers[REQUEST_ID_HEADER] = ctx.request_id
        try:
            return await self._handle(request, ctx, headers)
        except AuthError as exc:
            headers["WWW-Authenticate"] = exc.challenge
            return _error_response(exc, headers)
        except MethodNotAllowed as exc:
            raw_path = request.scope.get("raw_path", b"").decode("latin-1")
            headers["Allow"] = ", ".join(self.router.allowed_methods(raw_path))
            return _error_response(exc, headers, http_status=405)
        except MCError as exc:
            return _error_response(exc, headers)
        except grpc.aio.AioRpcError as exc:
            return _status_response(errors.status_from_rpc_error(exc), headers)
        except Exception:
            log.exception("gateway bug", extra={"request_id": ctx.request_id})
            return _error_response(Internal("internal error"), headers)

    async def _handle(
        self, request: Request, ctx: CallContext, headers: dict[str, str]
    ) -> Response:
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        binding, path_vars = self.router.match(request.method, raw_path.decode("latin-1"))
        rpc = binding.rpc
        if rpc.access == ACCESS_INTERNAL:
            raise NotFound(
                f"no API at {raw_path.decode('latin-1')}",
                reason=ErrorReason.ERROR_REASON_ROUTE_NOT_FOUND,
            )
        identity = await self.authenticator.authenticate(request.headers)
        if rpc.access == ACCESS_OPERATOR and not identity.is_operator:
            raise PermissionDenied(
                "this API is for operators", reason=ErrorReason.ERROR_REASON_OPERATOR_REQUIRED
            )
        if rpc.access != ACCESS_OPERATOR and identity.tenant is None:
            raise PermissionDenied(
                "this API acts for a tenant; the caller has none",
                reason=ErrorReason.ERROR_REASON_TENANT_REQUIRED,
            )
        if self.limiter is not None:
            decision = await self.limiter.check(identity)
            headers.update(decision.headers)
            if not decision.allowed:
                return _error_response(denial(decision), headers)
        body = await _read_body(request, self.settings.max_body_bytes)
        try:
            query = parse_qsl(
                request.scope.get("query_string", b"").decode("latin-1"),
                keep_blank_values=True,
                max_num_fields=MAX_QUERY_FIELDS,
            )
        except ValueError as exc:
            raise InvalidArgument.field("query", str(exc)) from None
        message = transcode.build_request(binding, path_vars, query, body)
        if rpc.access != ACCESS_OPERATOR:
            _scope_to_tenant(message, identity)
        metadata = [*_identity_metadata(identity), *ctx.metadata()]
        if rpc.server_streaming:
            return self._stream(request, binding, message, metadata, ctx, headers)
        reply = await self.upstreams.unary(rpc, message, metadata, ctx.timeout_s)
        return JSONResponse(transcode.render(reply, binding.response_body), headers=headers)

    def _stream(
        self,
        request: Request,
        binding: Binding,
        message: Message,
        metadata: list[tuple[str, str]],
        ctx: CallContext,
        headers: dict[str, str],
    ) -> Response:
        sse = "text/event-stream" in request.headers.get("accept", "")
        stream = self.upstreams.server_stream(binding.rpc, message, metadata, ctx.timeout_s)

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for item in stream:
                    yield _frame({"result": transcode.render(item, binding.response_body)}, sse)
            except grpc.aio.AioRpcError as exc:
                status = errors.status_from_rpc_error(exc)
                yield _frame({"error": errors.status_json(status)}, sse, event="error")

        media = "text/event-stream" if sse else "application/x-ndjson"
        return StreamingResponse(lines(), media_type=media, headers=headers)

    async def openapi_json(self, request: Request) -> Response:
        return JSONResponse(self.openapi())

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "SERVING"})

    def asgi(self) -> ASGIApp:
        """The ASGI app: two fixed paths, every other request through `handle` (no router of
        Starlette's, so that any path, even one with control characters, gets a JSON answer)."""
        fixed = {"/openapi.json": self.openapi_json, "/healthz": self.healthz}

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return
            request = Request(scope, receive)
            endpoint = fixed.get(scope.get("path", "")) if request.method == "GET" else None
            response = await (endpoint or self.handle)(request)
            await response(scope, receive, send)

        return app


def _identity_metadata(identity: Identity) -> list[tuple[str, str]]:
    """The only source of tenant and principal metadata toward the fleet."""
    out = [(PRINCIPAL_HEADER, str(identity.principal))]
    if identity.tenant is not None:
        out.append((TENANT_HEADER, identity.tenant))
    return out


def _scope_to_tenant(message: Message, identity: Identity) -> None:
    """A top-level `tenant` field of a tenant RPC defaults to the caller's tenant; naming
    another tenant gets the 404 an absent resource gets (it is absent, for this caller)."""
    field = message.DESCRIPTOR.fields_by_name.get(TENANT_FIELD)
    if field is None or field.type != field.TYPE_STRING or field.label == field.LABEL_REPEATED:
        return
    value = getattr(message, TENANT_FIELD)
    if not value:
        setattr(message, TENANT_FIELD, identity.tenant)
    elif value != identity.tenant:
        raise NotFound("not found", reason=ErrorReason.ERROR_REASON_ROUTE_NOT_FOUND)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InvalidArgument.field("body", f"larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvalidArgument.field("body", f"larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _frame(payload: dict[str, Any], sse: bool, event: str | None = None) -> bytes:
    data = json.dumps(payload, separators=(",", ":"))
    if not sse:
        return (data + "\n").encode()
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {data}\n\n".encode()


def _error_response(
    error: MCError, headers: dict[str, str], http_status: int | None = None
) -> Response:
    return _status_response(errors.status_from_error(error), headers, http_status)


def _status_response(
    status: status_pb2.Status, headers: dict[str, str], http_status: int | None = None
) -> Response:
    code = http_status or errors.http_status(errors.code_of(status))
    return JSONResponse(errors.status_json(status), status_code=code, headers=headers)
