"""Rate limit response headers for Envoy's ``response_headers_to_add``.

``ietf``: the ``RateLimit-Policy`` and ``RateLimit`` fields of
draft-ietf-httpapi-ratelimit-headers-09, as HTTP Structured Fields (RFC 9651) lists:

    RateLimit-Policy: "edge-per-ip/per-second";q=3;w=1
    RateLimit: "edge-per-ip/per-second";r=0;t=1

one policy item per distinct limit that decided a descriptor (``q`` its quota, ``w`` its
window in seconds), and one ``RateLimit`` item for the most restrictive of them: the denied
one with the longest wait, else the one with the least remaining (``r`` remaining, ``t``
seconds until it resets or, when denied, until a retry can succeed).

``x-ratelimit``: Envoy's own ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` (its
``DRAFT_VERSION_03`` format, for deployments whose filter does not add them itself):
``X-RateLimit-Limit: 3, 3;w=1`` (the limit in force, then each policy with its window).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class HeaderStyle(StrEnum):
    NONE = "none"
    IETF = "ietf"
    X_RATELIMIT = "x-ratelimit"


@dataclass(frozen=True, slots=True)
class Shown:
    """A limit as the headers show it."""

    name: str  # rule/limit
    quota: int
    window_ms: int
    remaining: int
    wait_ms: int  # until reset, or until a retry can succeed when denied
    denied: bool


def _seconds(ms: int) -> int:
    return -(-ms // 1000)


def _sf_string(text: str) -> str:
    """An sf-string: printable ASCII with ``"`` and ``\\`` escaped (names are ASCII ids)."""
    printable = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'


def most_restrictive(shown: list[Shown]) -> Shown:
    denied = [s for s in shown if s.denied]
    if denied:
        return max(denied, key=lambda s: s.wait_ms)
    return min(shown, key=lambda s: (s.remaining, -s.wait_ms))


def ratelimit_headers(style: HeaderStyle, shown: list[Shown]) -> list[tuple[str, str]]:
    """The headers to add for the limits that decided a response's descriptors."""
    if style is HeaderStyle.NONE or not shown:
        return []
    top = most_restrictive(shown)
    policies: dict[str, Shown] = {}
    for s in shown:
        policies.setdefault(s.name, s)
    if style is HeaderStyle.IETF:
        policy = ", ".join(
            f"{_sf_string(s.name)};q={s.quota};w={max(1, _seconds(s.window_ms))}"
            for s in policies.values()
        )
        current = f"{_sf_string(top.name)};r={top.remaining};t={_seconds(top.wait_ms)}"
        return [("RateLimit-Policy", policy), ("RateLimit", current)]
    windows = ", ".join(f"{s.quota};w={max(1, _seconds(s.window_ms))}" for s in policies.values())
    return [
        ("X-RateLimit-Limit", f"{top.quota}, {windows}"),
        ("X-RateLimit-Remaining", str(top.remaining)),
        ("X-RateLimit-Reset", str(_seconds(top.wait_ms))),
    ]
