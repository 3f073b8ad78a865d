"""Prometheus metrics for RPCs, on a per-service registry served from a side port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

# Buckets in seconds from 100 us to 5 s: MC's hot paths (limiter checks) live below 5 ms.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class RpcMetrics:
    """RPC latency histogram and handled/error counters, labelled by method and code."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.registry = registry
        self._service = service
        self._latency = Histogram(
            "mc_grpc_server_handling_seconds",
            "RPC handling latency in seconds.",
            ["service", "method"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self._handled = Counter(
            "mc_grpc_server_handled_total",
            "RPCs completed, by status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self._errors = Counter(
            "mc_grpc_server_errors_total",
            "RPCs that ended with a non-OK status.",
            ["service", "method", "code"],
            registry=registry,
        )

    def for_method(self, method: str) -> Callable[[float, grpc.StatusCode], None]:
        """A fast observer for one method (label children are resolved once)."""
        latency = self._latency.labels(self._service, method)
        handled: dict[grpc.StatusCode, Any] = {}
        service = self._service

        def observe(seconds: float, code: grpc.StatusCode) -> None:
            latency.observe(seconds)
            counter = handled.get(code)
            if counter is None:
                counter = handled[code] = self._handled.labels(service, method, code.name)
            counter.inc()
            if code is not grpc.StatusCode.OK:
                self._errors.labels(service, method, code.name).inc()

        return observe


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> Any:
    """Serve `/metrics` for `registry` on a side port; returns the server (call `.shutdown()`)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
