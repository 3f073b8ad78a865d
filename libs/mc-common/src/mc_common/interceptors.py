"""The gRPC interceptors every MC server and client uses.

Server side, `ServerInterceptor` does, in order: metrics, logs, and the one place where domain
errors become gRPC statuses; authorizes the peer (its SPIFFE ID, from its verified client
certificate) for the RPC's access rule and for the tenant and principal it asserts, then binds
them; enforces the request rules declared in the protos. Wrapped handlers are
cached per method, so the per-call cost is the wrapper itself. Client side,
`TenantClientInterceptor` forwards the tenant context.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError, Message

from mc.common.v1 import options_pb2
from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common import tracecontext
from mc_common.errors import ERROR_DOMAIN, InvalidArgument, MCError
from mc_common.identity.authz import PeerPolicy
from mc_common.metrics import SERVER_STREAM, RpcMetrics
from mc_common.tenancy import (
    PRINCIPAL_HEADER,
    TENANT_HEADER,
    Principal,
    _peer,
    _principal,
    _tenant,
    outgoing_metadata,
    require_operator,
    require_tenant,
    validate_tenant_id,
)
from mc_common.tracecontext import TRACEPARENT_HEADER
from mc_common.validation import validate_request

log = logging.getLogger("mc.rpc")
access_log = logging.getLogger("mc.access")

Access = int  # an mc.common.v1.Access enum value
if TYPE_CHECKING:  # grpc's classes are generic only in the type stubs
    Ctx = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Ctx = grpc.aio.ServicerContext
    Handler = grpc.RpcMethodHandler
UnaryBehavior = Callable[[Any, Ctx], Awaitable[Any]]
StreamBehavior = Callable[[Any, Ctx], AsyncIterator[Any]]


def method_access(method: str, overrides: Mapping[str, Access] | None = None) -> Access:
    """The declared access rule of `/pkg.Service/Method`.

    MC's own RPCs (`mc.*` packages) without the option act for a tenant, so forgetting it fails
    safe. Infrastructure services we host but do not own (health, reflection, Envoy's rate limit
    API) are internal: they carry no tenant and identify what they act on in their requests.
    """
    if overrides and method in overrides:
        return overrides[method]
    name = method.lstrip("/").replace("/", ".")
    if not name.startswith("mc."):
        return options_pb2.ACCESS_INTERNAL
    try:
        desc = descriptor_pool.Default().FindMethodByName(name)  # type: ignore[no-untyped-call]
    except KeyError:
        return options_pb2.ACCESS_TENANT
    access = desc.GetOptions().Extensions[options_pb2.access]
    return access or options_pb2.ACCESS_TENANT


class UnsupportedHandler(TypeError):
    """A service registered a handler kind MC servers cannot wrap (raised at registration)."""


class _PlainStatus:
    """A status without details, for errors whose text must not reach the caller."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata: tuple[tuple[str, str], ...] = ()


class _Undecodable:
    """Stands in for a request whose bytes did not parse, so the error maps like any other."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Every MC server's per-call concerns, in this order, in one wrapper per method.

    1. Observability: times and counts every RPC, logs failures, and is the one place where
       domain errors become rich gRPC statuses (undecodable request bytes included).
    2. Identity and tenancy: authorizes the peer's SPIFFE ID for the RPC's declared access
       rule (the `(mc.common.v1.access)` option, ADR 0002) and for the tenant and principal
       metadata it sends (`PeerPolicy`, ADR 0040), then binds them.
    3. Validation: enforces the request rules declared in the protos (PGV, ADR 0001).

    They are one wrapper rather than three interceptors because grpc.aio runs each interceptor
    and its wrapper as coroutines on every call. `mc_common.server` goes further and wraps the
    handlers as services register them (`wrap_handler`), so no grpc interceptor runs at all;
    as an interceptor this class does the same (wrapping each method's handler once), for
    servers built otherwise.
    """

    def __init__(
        self,
        metrics: RpcMetrics,
        access_overrides: Mapping[str, Access] | None = None,
        *,
        policy: PeerPolicy,
        front_door_methods: Collection[str] = (),
        error_domain: str = ERROR_DOMAIN,
        access_log: bool = True,
    ) -> None:
        self._access_log = access_log
        self._metrics = metrics
        self._error_domain = error_domain
        self._overrides = dict(access_overrides or {})
        self._policy = policy
        self._front_door = frozenset(front_door_methods)
        self._cache: dict[str, Handler | None] = {}  # wrapped handlers, when an interceptor

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        try:
            return self._cache[method]  # type: ignore[return-value]
        except KeyError:
            pass
        handler = await continuation(handler_call_details)
        wrapped = None if handler is None else self.wrap_handler(method, handler)
        self._cache[method] = wrapped
        return wrapped  # type: ignore[return-value]

    def wrap_handler(self, method: str, handler: Handler) -> Handler:
        """``handler`` of ``method`` (``/pkg.Service/Method``), wrapped."""
        deserializer = self.wrap_deserializer(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self.wrap_unary(method, handler.unary_unary),  # type: ignore[arg-type]
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self.wrap_stream(method, handler.unary_stream),  # type: ignore[arg-type]
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if method.lstrip("/").startswith("mc."):
            # Request streams would get neither tenant binding, access rules, validation nor
            # error mapping per message: refused rather than served unwrapped.
            raise UnsupportedHandler(
                f"{method}: client- and bidi-streaming RPCs are not supported by MC servers"
            )
        # Infrastructure we host (server reflection): no tenant, no domain errors.
        return handler

    def wrap_deserializer(self, deserializer: Any) -> Any:
        """Undecodable request bytes become INVALID_ARGUMENT (grpc would say UNKNOWN)."""
        if deserializer is None:
            return None

        def safe(data: bytes) -> Any:
            try:
                return deserializer(data)
            except DecodeError as error:
                return _Undecodable(error)

        return safe

    async def _fail(self, method: str, context: Ctx, error: Exception) -> None:
        status: grpc.Status | _PlainStatus
        if isinstance(error, MCError):
            status = error.to_status(self._error_domain)
            if error.grpc_code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                log.error("rpc failed", extra={"method": method, "reason": error.reason})
        else:
            log.exception("unhandled error", extra={"method": method})
            status = _PlainStatus(grpc.StatusCode.INTERNAL, "internal error")
        trailing = (*status.trailing_metadata, *tracecontext.outgoing_metadata())
        await context.abort(status.code, status.details, trailing)

    def _binder(self, method: str) -> Callable[[Ctx], None]:
        access = method_access(method, self._overrides)
        policy = self._policy
        front_door_only = method in self._front_door

        def bind(context: Ctx) -> None:
            # Each RPC runs in its own task, so the contextvars set here die with the call.
            raw_tenant: str | None = None
            raw_principal: str | None = None
            raw_traceparent: str | None = None
            for key, value in context.invocation_metadata() or ():
                if key == TENANT_HEADER:
                    raw_tenant = str(value)
                elif key == PRINCIPAL_HEADER:
                    raw_principal = str(value)
                elif key == TRACEPARENT_HEADER:
                    raw_traceparent = str(value)
            # Trace context first, so even a refused call answers and logs its trace id.
            context.set_trailing_metadata(
                ((TRACEPARENT_HEADER, tracecontext.begin(raw_traceparent)),)
            )
            # Who is asking decides what of the metadata is believed, so the peer is
            # authorized before the metadata is even parsed.
            peer = policy.peer(context)
            policy.authorize(
                method,
                access,
                peer,
                tenant=raw_tenant is not None,
                principal_kind=None if raw_principal is None else _kind(raw_principal),
                front_door_only=front_door_only,
            )
            _peer.set(peer)
            _tenant.set(None if raw_tenant is None else validate_tenant_id(raw_tenant))
            _principal.set(None if raw_principal is None else Principal.parse(raw_principal))
            if access == options_pb2.ACCESS_OPERATOR:
                require_operator()
            elif access == options_pb2.ACCESS_TENANT:
                require_tenant()

        return bind

    def wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        observe = self._metrics.for_method(method)
        bind = self._binder(method)

        async def wrapper(request: Any, context: Ctx) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if type(request) is _Undecodable:
                    raise InvalidArgument(
                        f"request is not a valid message: {request.error}",
                        reason=ErrorReason.ERROR_REASON_REQUEST_UNDECODABLE,
                    )
                bind(context)
                _validate(request)
                return await behavior(request, context)
            except MCError as error:
                code = error.grpc_code
                await self._fail(method, context, error)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[assignment]
                raise
            except Exception as error:
                code = grpc.StatusCode.INTERNAL
                await self._fail(method, context, error)
            finally:
                elapsed = time.perf_counter() - start
                observe(elapsed, code, int(code is grpc.StatusCode.OK))
                if self._access_log:
                    _log_access(method, code, elapsed)

        return wrapper

    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        observe = self._metrics.for_method(method, SERVER_STREAM)
        bind = self._binder(method)

        async def wrapper(request: Any, context: Ctx) -> AsyncIterator[Any]:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            sent = 0
            try:
                if type(request) is _Undecodable:
                    raise InvalidArgument(
                        f"request is not a valid message: {request.error}",
                        reason=ErrorReason.ERROR_REASON_REQUEST_UNDECODABLE,
                    )
                bind(context)
                _validate(request)
                async for item in behavior(request, context):
                    sent += 1
                    yield item
            except MCError as error:
                code = error.grpc_code
                await self._fail(method, context, error)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[assignment]
                raise
            except Exception as error:
                code = grpc.StatusCode.INTERNAL
                await self._fail(method, context, error)
            finally:
                elapsed = time.perf_counter() - start
                observe(elapsed, code, sent)
                if self._access_log:
                    _log_access(method, code, elapsed, sent)

        return wrapper


def _kind(raw_principal: str) -> str:
    kind, sep, _ = raw_principal.partition(":")
    return kind if sep else "user"  # as Principal.parse reads it


def _log_access(
    method: str, code: grpc.StatusCode, elapsed: float, messages: int | None = None
) -> None:
    """The access line of one RPC (tenant, principal and trace id come from the formatter)."""
    extra: dict[str, Any] = {"method": method, "code": code.name}
    extra["duration_ms"] = round(elapsed * 1000, 3)
    if messages is not None:
        extra["messages"] = messages
    access_log.info("rpc", extra=extra)


def _validate(request: Any) -> None:
    if not isinstance(request, Message):
        raise InvalidArgument(
            "request is not a protobuf message", reason=ErrorReason.ERROR_REASON_REQUEST_UNDECODABLE
        )
    validate_request(request)


class TenantClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds the current tenant and principal to every outgoing call's metadata."""

    @staticmethod
    def _details(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        extra = [*outgoing_metadata(), *tracecontext.outgoing_metadata()]
        if not extra:
            return details
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        for key, value in extra:
            if key not in metadata:
                metadata.add(key, value)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def,override]
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def,override]
        return await continuation(self._details(client_call_details), request)
