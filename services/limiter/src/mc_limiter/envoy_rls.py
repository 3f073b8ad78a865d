"""Envoy's rate limit service API (`envoy.service.ratelimit.v3.RateLimitService`) over MC limits.

An Envoy `envoy.filters.http.ratelimit` filter sends a domain and descriptors; each descriptor
becomes one MC check (``descriptors.py`` maps it, injectively) and is decided on its own: one
descriptor that is invalid, or whose hits exceed a limit's capacity, never hides another's
OVER_LIMIT. Invalid descriptors get the domain's policy (OVER_LIMIT by default, or OK); hits
above a capacity are OVER_LIMIT with that limit and its reset. The work per call is bounded
(``MAX_DESCRIPTORS``) and linear in the descriptors: every check of the call goes out in one
``check_each`` batch, plus one batch of peeks for the descriptors above a capacity.

A descriptor's ``limit`` (the per-descriptor override Envoy sends when a route configures one)
replaces the MC rules for that descriptor, as envoyproxy/ratelimit does. Statuses carry
``current_limit``, ``limit_remaining`` and ``duration_until_reset``; with ``headers`` set, the
response also carries the IETF ``RateLimit`` / ``RateLimit-Policy`` fields
(draft-ietf-httpapi-ratelimit-headers-09) or Envoy's ``X-RateLimit-*`` ones (see
``ratelimit_headers.py``). ``quota`` is never set: see docs/adr/0021-envoy-rls-contract.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from google.protobuf.duration_pb2 import Duration

from envoy.config.core.v3 import base_pb2 as core
from envoy.service.ratelimit.v3 import rls_pb2 as rls
from envoy.service.ratelimit.v3 import rls_pb2_grpc as rls_grpc
from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import FieldViolation, InvalidArgument, MCError
from mc_limiter.convert import reset_after_ms
from mc_limiter.decisions import CheckRequest, Decision, LimitResult
from mc_limiter.descriptors import Invalid, descriptor_check
from mc_limiter.envoy_config import Fixed, resolve_request
from mc_limiter.errors import CostExceedsCapacityError
from mc_limiter.limiter import Limiter
from mc_limiter.ratelimit_headers import HeaderStyle, Shown, ratelimit_headers

RLS_SERVICE = rls.DESCRIPTOR.services_by_name["RateLimitService"].full_name
MAX_DESCRIPTORS = 1000
MAX_DOMAIN_LENGTH = 128
Code = rls.RateLimitResponse
Unit = rls.RateLimitResponse.RateLimit
_UNITS_MS = {
    1_000: Unit.SECOND,
    60_000: Unit.MINUTE,
    3_600_000: Unit.HOUR,
    86_400_000: Unit.DAY,
    604_800_000: Unit.WEEK,
    30 * 86_400_000: Unit.MONTH,  # as an override's MONTH (envoyproxy/ratelimit's 30 days)
    365 * 86_400_000: Unit.YEAR,
}


class InvalidPolicy(StrEnum):
    """What an invalid descriptor gets: OVER_LIMIT (fail closed, the default) or OK."""

    OVER_LIMIT = "over_limit"
    OK = "ok"


@dataclass(frozen=True, slots=True)
class RlsOptions:
    """How descriptors map onto MC checks and what the response carries."""

    tenant_entry: str = "tenant"
    token_entry: str = "token"
    invalid: InvalidPolicy = InvalidPolicy.OVER_LIMIT
    invalid_by_domain: Mapping[str, InvalidPolicy] = field(default_factory=dict)
    headers: HeaderStyle = HeaderStyle.NONE

    def invalid_policy(self, domain: str) -> InvalidPolicy:
        return self.invalid_by_domain.get(domain, self.invalid)


@dataclass(frozen=True, slots=True)
class _Answer:
    """One descriptor's status and what its headers show (``None``: nothing limits it)."""

    status: rls.RateLimitResponse.DescriptorStatus
    shown: Shown | None = None


def _duration(ms: int) -> Duration:
    return Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def _current_limit(result: LimitResult) -> Any:
    unit = _UNITS_MS.get(result.window_ms)
    name = f"{result.rule_id}/{result.limit_name}"
    if unit is None:
        return Unit(name=name)
    return Unit(name=name, requests_per_unit=min(result.limit, 2**32 - 1), unit=unit)


def _answer(code: int, result: LimitResult | None, wait_ms: int) -> _Answer:
    status = rls.RateLimitResponse.DescriptorStatus(code=code)  # type: ignore[arg-type]
    if result is None:
        return _Answer(status)
    status.current_limit.CopyFrom(_current_limit(result))
    remaining = max(0, min(result.remaining, 2**32 - 1))
    status.limit_remaining = remaining
    status.duration_until_reset.CopyFrom(_duration(wait_ms))
    shown = Shown(
        f"{result.rule_id}/{result.limit_name}",
        result.limit,
        result.window_ms,
        remaining,
        wait_ms,
        code == Code.OVER_LIMIT,
    )
    return _Answer(status, shown)


def _deciding(decision: Decision) -> LimitResult | None:
    ref = decision.deciding
    if ref is None:
        return None
    return next(
        (r for r in decision.results if (r.rule_id, r.limit_name) == (ref.rule_id, ref.limit_name)),
        None,
    )


def decision_answer(decision: Decision) -> _Answer:
    """OK or OVER_LIMIT with the deciding limit (the retry when over, else its reset)."""
    result = _deciding(decision)
    if decision.allowed:
        return _answer(Code.OK, result, reset_after_ms(result) if result else 0)
    return _answer(Code.OVER_LIMIT, result, decision.retry_after_ms)


def capacity_answer(error: CostExceedsCapacityError, peek: Decision | MCError) -> _Answer:
    """OVER_LIMIT for hits above a limit's capacity, with that limit and its current reset
    (from a peek: nothing was consumed)."""
    result = None
    if isinstance(peek, Decision):
        result = next(
            (
                r
                for r in peek.results
                if (r.rule_id, r.limit_name) == (error.rule_id, error.limit_name)
            ),
            None,
        )
    return _answer(Code.OVER_LIMIT, result, reset_after_ms(result) if result else 0)


def invalid_answer(policy: InvalidPolicy) -> _Answer:
    code = Code.OK if policy is InvalidPolicy.OK else Code.OVER_LIMIT
    return _answer(code, None, 0)


def validate_request(request: rls.RateLimitRequest) -> None:
    """What makes the whole call invalid (no per-domain policy can apply)."""
    violations = []
    domain = request.domain
    if not domain:
        violations.append(FieldViolation("domain", "rate limit domain must not be empty"))
    elif len(domain) > MAX_DOMAIN_LENGTH:
        violations.append(FieldViolation("domain", f"must be at most {MAX_DOMAIN_LENGTH} long"))
    count = len(request.descriptors)
    if count == 0:
        violations.append(FieldViolation("descriptors", "at least one descriptor is required"))
    elif count > MAX_DESCRIPTORS:
        violations.append(
            FieldViolation("descriptors", f"at most {MAX_DESCRIPTORS} per call, got {count}")
        )
    if violations:
        reason = ErrorReason.ERROR_REASON_TOO_MANY_DESCRIPTORS if count > MAX_DESCRIPTORS else None
        raise InvalidArgument(
            "; ".join(f"{v.field}: {v.description}" for v in violations), violations, reason=reason
        )


class RateLimitServicer(rls_grpc.RateLimitServiceServicer):
    """Answers Envoy's ShouldRateLimit from MC rules (wire-compatible with Envoy's RLS v3)."""

    def __init__(self, limiter: Limiter, options: RlsOptions | None = None) -> None:
        self._limiter = limiter
        self._options = options or RlsOptions()

    async def ShouldRateLimit(
        self, request: rls.RateLimitRequest, context: Any
    ) -> rls.RateLimitResponse:
        validate_request(request)
        answers = await self.decide(request)
        overall = (
            Code.OVER_LIMIT if any(a.status.code == Code.OVER_LIMIT for a in answers) else Code.OK
        )
        response = rls.RateLimitResponse(
            overall_code=overall,  # type: ignore[arg-type]
            statuses=[a.status for a in answers],
        )
        shown = [a.shown for a in answers if a.shown is not None]
        for name, value in ratelimit_headers(self._options.headers, shown):
            response.response_headers_to_add.append(core.HeaderValue(key=name, value=value))
        return response

    async def decide(self, request: rls.RateLimitRequest) -> list[_Answer]:
        """One answer per descriptor, in order; one batch of checks (and one of peeks)."""
        options = self._options
        domain = request.domain
        policy = options.invalid_policy(domain)
        hits = request.hits_addend or 1
        answers: list[_Answer | None] = [None] * len(request.descriptors)
        checks: list[CheckRequest] = []
        at: list[int] = []
        mapped_all: list[CheckRequest | Invalid | Fixed] = [
            descriptor_check(domain, descriptor, hits, options.tenant_entry, options.token_entry)
            for descriptor in request.descriptors
        ]
        declarative = self._limiter.declarative(domain)
        if declarative is not None:  # a rules file's tree decides (envoy_config.py)
            entries = [[(e.key, e.value) for e in d.entries] for d in request.descriptors]
            mapped_all = resolve_request(declarative, entries, mapped_all)  # type: ignore[arg-type]
        for i, mapped in enumerate(mapped_all):
            if isinstance(mapped, Invalid):
                answers[i] = invalid_answer(policy)
            elif isinstance(mapped, Fixed):
                code = Code.OVER_LIMIT if mapped.over_limit else Code.OK
                answers[i] = _answer(code, None, 0)
            else:
                checks.append(mapped)
                at.append(i)
        outcomes = await self._limiter.check_each(checks, unmatched_allow=True)
        over: list[tuple[int, CostExceedsCapacityError, CheckRequest]] = []
        for i, check, outcome in zip(at, checks, outcomes, strict=True):
            if isinstance(outcome, Decision):
                answers[i] = decision_answer(outcome)
            elif isinstance(outcome, CostExceedsCapacityError):
                over.append((i, outcome, check))
            else:
                answers[i] = invalid_answer(policy)
        if over:
            peeks = await self._limiter.check_each(
                [replace(check, cost=0) for _, _, check in over], unmatched_allow=True
            )
            for (i, error, _), peek in zip(over, peeks, strict=True):
                answers[i] = capacity_answer(error, peek)
        return [a if a is not None else invalid_answer(policy) for a in answers]
