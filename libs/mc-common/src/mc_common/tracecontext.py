"""W3C Trace Context for every call, whether or not spans are exported.

Each RPC continues the caller's trace (`traceparent` metadata) or starts one, answers with its
own `traceparent` (trailing metadata), and hands it on to the calls it makes; logs carry the
trace id. With an OpenTelemetry exporter configured, the SDK's span wins (`current_ids`).
"""

from __future__ import annotations

import random
import re
from contextvars import ContextVar

from opentelemetry import trace

TRACEPARENT_HEADER = "traceparent"
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

_ids: ContextVar[tuple[int, int] | None] = ContextVar("mc_trace_ids", default=None)


def parse_traceparent(value: str | None) -> int | None:
    """The trace id of a valid W3C `traceparent` value, else None (version ff, zero ids)."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip().lower())
    if match is None or match.group(1) == "ff":
        return None
    trace_id, parent_id = int(match.group(2), 16), int(match.group(3), 16)
    if trace_id == 0 or parent_id == 0:
        return None
    return trace_id


def begin(incoming: str | None) -> str:
    """Enter this call's span: the incoming trace (or a new one) with a new span id; returns
    the `traceparent` naming this span."""
    trace_id = parse_traceparent(incoming) or random.getrandbits(128) or 1
    span_id = random.getrandbits(64) or 1
    _ids.set((trace_id, span_id))
    return format_traceparent(trace_id, span_id)


def format_traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def current_ids() -> tuple[int, int] | None:
    """(trace id, span id) of the current call: the exported span's, else ours."""
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        return span.trace_id, span.span_id
    return _ids.get()


def current_traceparent() -> str | None:
    ids = current_ids()
    return None if ids is None else format_traceparent(*ids)


def outgoing_metadata() -> list[tuple[str, str]]:
    """`traceparent` for a call made while serving one, so the trace continues downstream."""
    value = current_traceparent()
    return [] if value is None else [(TRACEPARENT_HEADER, value)]
