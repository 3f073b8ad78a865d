"""Envoy's rate limit service API (`envoy.service.ratelimit.v3.RateLimitService`) over MC limits.

An Envoy `envoy.filters.http.ratelimit` filter sends a domain and descriptors; each descriptor
becomes one MC check: the `tenant` entry names the tenant, a `token` entry the token, and the
domain plus the remaining entries (`k=v` joined by `/`) the key, so MC rules match them with
globs such as `envoy:remote_address=*`. Hits are the descriptor's `hits_addend`, else the
request's, else 1. Descriptors that no rule matches are OK with no limit, as Envoy expects.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.duration_pb2 import Duration

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as descriptor_pb
from envoy.service.ratelimit.v3 import rls_pb2 as rls
from envoy.service.ratelimit.v3 import rls_pb2_grpc as rls_grpc
from mc_common.errors import InvalidArgument
from mc_limiter.convert import reset_after_ms
from mc_limiter.decisions import CheckRequest, Decision, LimitResult
from mc_limiter.errors import CostExceedsCapacityError
from mc_limiter.limiter import Limiter

RLS_SERVICE = rls.DESCRIPTOR.services_by_name["RateLimitService"].full_name
Unit = rls.RateLimitResponse.RateLimit
_UNITS_MS = {
    1_000: Unit.SECOND,
    60_000: Unit.MINUTE,
    3_600_000: Unit.HOUR,
    86_400_000: Unit.DAY,
    604_800_000: Unit.WEEK,
}


def descriptor_check(
    domain: str,
    descriptor: descriptor_pb.RateLimitDescriptor,
    hits: int,
    tenant_entry: str,
    token_entry: str,
) -> CheckRequest:
    tenant, token, parts = "", "", []
    for entry in descriptor.entries:
        if entry.key == tenant_entry:
            tenant = entry.value
        elif entry.key == token_entry:
            token = entry.value
        else:
            parts.append(f"{entry.key}={entry.value}")
    if descriptor.HasField("hits_addend"):
        hits = descriptor.hits_addend.value
    return CheckRequest(tenant or domain, token, f"{domain}:{'/'.join(parts)}", hits)


def _current_limit(result: LimitResult) -> Any:
    unit = _UNITS_MS.get(result.window_ms)
    name = f"{result.rule_id}/{result.limit_name}"
    if unit is None:
        return Unit(name=name)
    return Unit(name=name, requests_per_unit=min(result.limit, 2**32 - 1), unit=unit)


def descriptor_status(decision: Decision) -> rls.RateLimitResponse.DescriptorStatus:
    status = rls.RateLimitResponse.DescriptorStatus(
        code=rls.RateLimitResponse.OK if decision.allowed else rls.RateLimitResponse.OVER_LIMIT
    )
    deciding = next(
        (
            r
            for r in decision.results
            if decision.deciding
            and (r.rule_id, r.limit_name)
            == (decision.deciding.rule_id, decision.deciding.limit_name)
        ),
        None,
    )
    if deciding is None:
        return status
    status.current_limit.CopyFrom(_current_limit(deciding))
    status.limit_remaining = max(0, min(deciding.remaining, 2**32 - 1))
    wait_ms = decision.retry_after_ms if not decision.allowed else reset_after_ms(deciding)
    status.duration_until_reset.CopyFrom(
        Duration(seconds=wait_ms // 1000, nanos=(wait_ms % 1000) * 1_000_000)
    )
    return status


class RateLimitServicer(rls_grpc.RateLimitServiceServicer):
    """Answers Envoy's ShouldRateLimit from MC rules (wire-compatible with Envoy's RLS v3)."""

    def __init__(self, limiter: Limiter, tenant_entry: str = "tenant", token_entry: str = "token"):
        self._limiter = limiter
        self._tenant_entry = tenant_entry
        self._token_entry = token_entry

    async def ShouldRateLimit(
        self, request: rls.RateLimitRequest, context: Any
    ) -> rls.RateLimitResponse:
        if not request.domain:
            raise InvalidArgument.field("domain", "rate limit domain must not be empty")
        if not request.descriptors:
            raise InvalidArgument.field("descriptors", "at least one descriptor is required")
        hits = request.hits_addend or 1
        checks = [
            descriptor_check(request.domain, d, hits, self._tenant_entry, self._token_entry)
            for d in request.descriptors
        ]
        statuses = await self._statuses(checks)
        overall = (
            rls.RateLimitResponse.OVER_LIMIT
            if any(s.code == rls.RateLimitResponse.OVER_LIMIT for s in statuses)
            else rls.RateLimitResponse.OK
        )
        return rls.RateLimitResponse(overall_code=overall, statuses=statuses)

    async def _statuses(
        self, checks: list[CheckRequest]
    ) -> list[rls.RateLimitResponse.DescriptorStatus]:
        """Decide every descriptor; one whose hits exceed a limit's capacity is OVER_LIMIT (it
        could never be admitted), and the others are still decided, as Envoy expects."""
        over = rls.RateLimitResponse.DescriptorStatus(code=rls.RateLimitResponse.OVER_LIMIT)
        never: set[int] = set()
        while True:
            pending = [i for i in range(len(checks)) if i not in never]
            try:
                decisions = await self._limiter.check_batch(
                    [checks[i] for i in pending], unmatched_allow=True
                )
            except CostExceedsCapacityError as exc:
                if exc.request_index is None:
                    raise
                never.add(pending[exc.request_index])
                continue
            by_index = dict(zip(pending, decisions, strict=True))
            return [
                over if i in never else descriptor_status(by_index[i]) for i in range(len(checks))
            ]
