"""Per-request call context: deadline, request id and W3C trace context for the upstream call."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from mc_common.errors import InvalidArgument

REQUEST_ID_HEADER = "x-request-id"
TIMEOUT_HEADER = "grpc-timeout"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# https://www.w3.org/TR/trace-context/#traceparent-header-field-values (version 00)
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


@dataclass(frozen=True, slots=True)
class CallContext:
    """What the gateway forwards about one request, whatever the caller sent."""

    request_id: str
    timeout_s: float
    traceparent: str
    tracestate: str | None

    def metadata(self) -> list[tuple[str, str]]:
        out = [(REQUEST_ID_HEADER, self.request_id), ("traceparent", self.traceparent)]
        if self.tracestate:
            out.append(("tracestate", self.tracestate))
        return out


def parse_timeout(raw: str | None, default_s: float, max_s: float) -> float:
    """The deadline from a `grpc-timeout` header (gRPC wire format, e.g. `250m`), capped."""
    if raw is None:
        return default_s
    found = _TIMEOUT.fullmatch(raw.strip())
    if found is None:
        raise InvalidArgument.field(
            TIMEOUT_HEADER, "expected 1-8 digits and a unit of H, M, S, m, u or n (e.g. 500m)"
        )
    seconds = int(found.group(1)) * _UNIT_SECONDS[found.group(2)]
    if seconds <= 0:
        raise InvalidArgument.field(TIMEOUT_HEADER, "the timeout must be positive")
    return min(seconds, max_s)


def request_id(raw: str | None) -> str:
    """The caller's request id when well-formed, else a fresh one."""
    if raw is not None and _REQUEST_ID.fullmatch(raw):
        return raw
    return uuid.uuid4().hex


def child_traceparent(raw: str | None) -> str:
    """A traceparent for the upstream call: the caller's trace with the gateway's span as the
    parent, or a new sampled trace when the caller sent none (or an invalid one)."""
    span = secrets.token_hex(8)
    if raw is not None:
        found = _TRACEPARENT.fullmatch(raw.strip().lower())
        if found is not None:
            version, trace, _, flags = found.groups()
            if version != "ff" and trace != "0" * 32:
                return f"00-{trace}-{span}-{flags}"
    return f"00-{secrets.token_hex(16)}-{span}-01"


def build_call_context(
    headers: Mapping[str, str], default_timeout_s: float, max_timeout_s: float
) -> CallContext:
    """The call context of a request from its headers (raises InvalidArgument on a bad
    `grpc-timeout`); `tracestate` is kept only when it continues the caller's trace."""
    incoming = headers.get("traceparent")
    traceparent = child_traceparent(incoming)
    tracestate = headers.get("tracestate")
    continues = incoming is not None and traceparent.split("-")[1] in incoming.lower()
    if not continues or tracestate is None or len(tracestate) > 512 or not tracestate.isprintable():
        tracestate = None
    return CallContext(
        request_id=request_id(headers.get(REQUEST_ID_HEADER)),
        timeout_s=parse_timeout(headers.get(TIMEOUT_HEADER), default_timeout_s, max_timeout_s),
        traceparent=traceparent,
        tracestate=tracestate,
    )
