"""From an Envoy rate limit descriptor to one MC check, injectively.

A descriptor is an ordered list of ``key=value`` entries. The entry named ``tenant_entry``
(``tenant``) names the tenant and must be a valid MC tenant id; ``token_entry`` (``token``)
names the token; each may appear at most once, anywhere in the list. A descriptor without a
tenant entry belongs to ``envoy.<domain>`` (not a valid tenant id, so it never shares a
counter with a real tenant). The check's key is ``<domain>:<k>=<v>/<k>=<v>...`` over the other
entries in order, with ``%``, ``/`` and ``=`` in keys and values (and ``%``, ``:`` in the
domain) percent-encoded, so two different descriptors never share a counter: the map from
(domain, tenant, token, other entries in order) to (tenant, token, key) is injective. (So a
rule for paths says ``edge:path=%2Fapi%2F*``; IPv6 addresses keep their colons.)

Hits are the descriptor's ``hits_addend`` when set, else the request's, else 1. A descriptor's
``limit`` override becomes ``CheckRequest.override``: a sliding window of ``requests_per_unit``
per unit (10 sub-windows), replacing the MC rules for that descriptor.

What cannot become a valid check is ``Invalid`` with a reason (the caller applies the domain's
policy): a duplicated or malformed tenant entry, a duplicated token entry, a key or token over
1,024 characters, hits above ``MAX_LIMIT``, an override with no usable unit or amount.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as descriptor_pb
from envoy.type.v3 import ratelimit_unit_pb2 as unit_pb
from mc_common.tenancy import TENANT_PATTERN
from mc_limiter.decisions import CheckRequest
from mc_limiter.rules import MAX_LIMIT, Algorithm, Limit

MAX_KEY_LENGTH = 1024  # as Limiter checks
OVERRIDE_SUB_WINDOWS = 10
OVERRIDE_LIMIT_NAME = "override"
_ENTRY_ESCAPES = str.maketrans({"%": "%25", "/": "%2F", "=": "%3D"})
_DOMAIN_ESCAPES = str.maketrans({"%": "%25", ":": "%3A"})
# envoy.type.v3.RateLimitUnit -> window (envoyproxy/ratelimit's dividers: a month is 30 days,
# a year 365).
OVERRIDE_UNITS_MS = {
    unit_pb.SECOND: 1_000,
    unit_pb.MINUTE: 60_000,
    unit_pb.HOUR: 3_600_000,
    unit_pb.DAY: 86_400_000,
    unit_pb.MONTH: 30 * 86_400_000,
    unit_pb.YEAR: 365 * 86_400_000,
}


@dataclass(frozen=True, slots=True)
class Invalid:
    """A descriptor that cannot be checked, and why."""

    reason: str


def encode_entry(text: str) -> str:
    return text.translate(_ENTRY_ESCAPES)


def encode_domain(domain: str) -> str:
    return domain.translate(_DOMAIN_ESCAPES)


def domain_tenant(domain: str) -> str:
    """The owner of descriptors without a tenant entry (never a valid tenant id)."""
    return f"envoy.{domain}"


def override_limit(limit: descriptor_pb.RateLimitDescriptor.RateLimitOverride) -> Limit | Invalid:
    window_ms = OVERRIDE_UNITS_MS.get(limit.unit)
    if window_ms is None:
        return Invalid("limit.unit: not a supported unit")
    if not 1 <= limit.requests_per_unit <= MAX_LIMIT:
        return Invalid(f"limit.requests_per_unit: must be in [1, {MAX_LIMIT}]")
    return Limit(
        name=OVERRIDE_LIMIT_NAME,
        algorithm=Algorithm.SLIDING_WINDOW,
        limit=limit.requests_per_unit,
        window_ms=window_ms,
        sub_windows=OVERRIDE_SUB_WINDOWS,
    )


def descriptor_check(
    domain: str,
    descriptor: descriptor_pb.RateLimitDescriptor,
    hits: int,
    tenant_entry: str = "tenant",
    token_entry: str = "token",
) -> CheckRequest | Invalid:
    """The check for ``descriptor`` in ``domain``, or why there is none."""
    tenant: str | None = None
    token: str | None = None
    parts: list[str] = []
    size = len(domain)
    for entry in descriptor.entries:
        if entry.key == tenant_entry:
            if tenant is not None:
                return Invalid(f"entries: more than one {tenant_entry!r} entry")
            tenant = entry.value
        elif entry.key == token_entry:
            if token is not None:
                return Invalid(f"entries: more than one {token_entry!r} entry")
            token = entry.value
        else:
            size += len(entry.key) + len(entry.value) + 2
            if size > MAX_KEY_LENGTH:  # checked as it grows: a huge list costs no more
                return Invalid(f"entries: the key would exceed {MAX_KEY_LENGTH} characters")
            parts.append(f"{encode_entry(entry.key)}={encode_entry(entry.value)}")
    if tenant is not None and not TENANT_PATTERN.match(tenant):
        return Invalid(f"{tenant_entry}: not a valid tenant id")
    if token is not None and len(token) > MAX_KEY_LENGTH:
        return Invalid(f"{token_entry}: longer than {MAX_KEY_LENGTH} characters")
    key = f"{encode_domain(domain)}:{'/'.join(parts)}"
    if len(key) > MAX_KEY_LENGTH:
        return Invalid(f"entries: the key would exceed {MAX_KEY_LENGTH} characters")
    if descriptor.HasField("hits_addend"):
        hits = descriptor.hits_addend.value
    if hits > MAX_LIMIT:
        return Invalid(f"hits_addend: must be at most {MAX_LIMIT}")
    override = None
    if descriptor.HasField("limit"):
        parsed = override_limit(descriptor.limit)
        if isinstance(parsed, Invalid):
            return parsed
        override = parsed
    return CheckRequest(
        tenant if tenant is not None else domain_tenant(domain),
        token or "",
        key,
        hits,
        override,
    )
