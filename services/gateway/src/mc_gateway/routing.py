"""Find the binding of an HTTP request: method and path against every path template."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import grpc

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import MCError, NotFound
from mc_gateway.descriptors import Binding


class MethodNotAllowed(MCError):
    """The path exists, but not for this HTTP method (HTTP 405)."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = ErrorReason.ERROR_REASON_METHOD_NOT_ALLOWED


class Router:
    """Bindings by HTTP method, most specific template first."""

    def __init__(self, bindings: Iterable[Binding]) -> None:
        self._by_method: dict[str, list[Binding]] = defaultdict(list)
        for b in bindings:
            self._by_method[b.http_method].append(b)
        for routes in self._by_method.values():
            routes.sort(key=lambda b: (-b.template.literal_weight, b.template.source))

    def match(self, method: str, raw_path: str) -> tuple[Binding, dict[str, str]]:
        for binding in self._by_method.get(method, ()):
            found = binding.template.match(raw_path)
            if found is not None:
                return binding, found
        for other, routes in self._by_method.items():
            if other != method and any(b.template.match(raw_path) is not None for b in routes):
                raise MethodNotAllowed(f"{method} is not allowed on {raw_path}")
        raise NotFound(f"no API at {raw_path}", reason=ErrorReason.ERROR_REASON_ROUTE_NOT_FOUND)

    def allowed_methods(self, raw_path: str) -> list[str]:
        return sorted(
            m
            for m, routes in self._by_method.items()
            if any(b.template.match(raw_path) for b in routes)
        )
