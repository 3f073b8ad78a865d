"""OpenTelemetry tracing set-up for a service (a provider per process, exporter by config)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)


def build_tracer_provider(
    service: str, exporter: str = "none", span_exporter: SpanExporter | None = None
) -> TracerProvider:
    """A provider for `service`; `exporter` is `none` or `console`, or pass a `span_exporter`.

    NOTE: an OTLP exporter needs the opentelemetry-exporter-otlp package, which production images
    add; the provider here is what every span of the service goes through either way.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    elif exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider


def install_tracer_provider(provider: TracerProvider) -> None:
    """Make `provider` the process-wide provider (once per process; later calls are ignored)."""
    trace.set_tracer_provider(provider)
