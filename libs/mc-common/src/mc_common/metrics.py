"""Prometheus metrics for RPCs, on a per-service registry served from a side port.

Names and labels are those of go-grpc-prometheus / grpc-ecosystem's `go-grpc-middleware`
(`grpc_server_started_total`, `grpc_server_handled_total`, `grpc_server_handling_seconds`,
`grpc_server_msg_received_total`, `grpc_server_msg_sent_total`, labelled `grpc_type`,
`grpc_service`, `grpc_method` and `grpc_code`), so existing gRPC dashboards and alerts work
unchanged. Each registry also carries the process and Python runtime collectors. Units are base
units (seconds, bytes), as Prometheus' naming rules and `promtool check metrics` require.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

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

UNARY = "unary"
SERVER_STREAM = "server_stream"


def add_runtime_collectors(registry: CollectorRegistry) -> None:
    """Register the process (CPU, memory, fds), platform and GC collectors on `registry`,
    once: a registry that already has them (or is the default one) is left as it is."""
    for make in (
        lambda: ProcessCollector(registry=registry),
        lambda: PlatformCollector(registry=registry),
        lambda: GCCollector(registry=registry),
    ):
        try:
            make()
        except ValueError:  # "Duplicated timeseries": already registered on this registry
            pass


class RpcMetrics:
    """The go-grpc-prometheus server metrics, for one server's methods."""

    def __init__(self, registry: CollectorRegistry, service: str = "") -> None:
        self.registry = registry
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self._started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            labels,
            registry=registry,
        )
        self._handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self._latency = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            labels,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self._received = Counter(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            labels,
            registry=registry,
        )
        self._sent = Counter(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            labels,
            registry=registry,
        )

    def for_method(
        self, method: str, grpc_type: str = UNARY
    ) -> Callable[[float, grpc.StatusCode, int], None]:
        """A fast observer for one method (`/package.Service/Method`): call it once the RPC
        ended with its duration, status code and the number of messages sent. Label children
        are resolved once per method."""
        service, _, name = method.lstrip("/").rpartition("/")
        labels = (grpc_type, service, name)
        started = self._started.labels(*labels)
        latency = self._latency.labels(*labels)
        received = self._received.labels(*labels)
        sent = self._sent.labels(*labels)
        handled: dict[grpc.StatusCode, Any] = {}

        def observe(seconds: float, code: grpc.StatusCode, messages_sent: int = 1) -> None:
            started.inc()
            received.inc()
            if messages_sent:
                sent.inc(messages_sent)
            latency.observe(seconds)
            counter = handled.get(code)
            if counter is None:
                counter = handled[code] = self._handled.labels(*labels, code.name)
            counter.inc()

        return observe


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> Any:
    """Serve `/metrics` for `registry` on a side port; returns the server (call `.shutdown()`)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
