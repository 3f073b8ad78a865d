"""Translation between `mc.limiter.v1` protobuf messages and the limiter domain."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from mc.limiter.v1 import limiter_pb2 as pb
from mc.limiter.v1 import limiter_service_pb2 as svc
from mc_limiter.admin import DomainPlan
from mc_limiter.decisions import UNLIMITED, Decision, LimitResult
from mc_limiter.rules import Algorithm, FailureMode, Mode, Rule, Sampling, Scope, StoredRule
from mc_limiter.store import StoredDomain
from mc_limiter.throttle import ThrottleLevel

UNLIMITED_REMAINING = 2**64 - 1  # `remaining` when no rule applies: nothing limits the caller

_SCOPES = {
    pb.RULE_SCOPE_TENANT: Scope.TENANT,
    pb.RULE_SCOPE_TOKEN: Scope.TOKEN,
    pb.RULE_SCOPE_KEY: Scope.KEY,
    pb.RULE_SCOPE_GLOBAL: Scope.GLOBAL,
    pb.RULE_SCOPE_TOKEN_KEY: Scope.TOKEN_KEY,
}
_ALGORITHMS = {
    pb.ALGORITHM_TOKEN_BUCKET: Algorithm.GCRA,
    pb.ALGORITHM_SLIDING_WINDOW: Algorithm.SLIDING_WINDOW,
}
_MODES = {
    pb.RULE_MODE_UNSPECIFIED: Mode.ENFORCE,
    pb.RULE_MODE_ENFORCE: Mode.ENFORCE,
    pb.RULE_MODE_SHADOW: Mode.SHADOW,
}
_FAILURE_MODES = {
    pb.FAILURE_MODE_UNSPECIFIED: FailureMode.FAIL_OPEN,
    pb.FAILURE_MODE_FAIL_OPEN: FailureMode.FAIL_OPEN,
    pb.FAILURE_MODE_FAIL_CLOSED: FailureMode.FAIL_CLOSED,
}
_SAMPLING = {
    pb.ENFORCE_SAMPLING_UNSPECIFIED: Sampling.HASH,
    pb.ENFORCE_SAMPLING_HASH: Sampling.HASH,
    pb.ENFORCE_SAMPLING_RANDOM: Sampling.RANDOM,
}
THROTTLE_LEVELS = {
    pb.THROTTLE_LEVEL_NONE: ThrottleLevel.NONE,
    pb.THROTTLE_LEVEL_MILD: ThrottleLevel.MILD,
    pb.THROTTLE_LEVEL_MODERATE: ThrottleLevel.MODERATE,
    pb.THROTTLE_LEVEL_HARD: ThrottleLevel.HARD,
}


_K = TypeVar("_K", bound=int)
_V = TypeVar("_V")


def _inverse(mapping: Mapping[_K, _V]) -> dict[_V, _K]:
    """Domain value -> proto number; ascending order lets an explicit value beat UNSPECIFIED."""
    return {value: key for key, value in sorted(mapping.items())}


_SCOPES_PB = _inverse(_SCOPES)
_ALGORITHMS_PB = _inverse(_ALGORITHMS)
_MODES_PB = _inverse(_MODES)
_FAILURE_MODES_PB = _inverse(_FAILURE_MODES)
_SAMPLING_PB = _inverse(_SAMPLING)
THROTTLE_LEVELS_PB = _inverse(THROTTLE_LEVELS)


def rule_data(message: pb.Rule) -> dict[str, Any]:
    """The rule as plain data for `parse_rule` (which reports field paths on errors)."""
    return {
        "id": message.id,
        "description": message.description,
        "scope": _SCOPES.get(message.scope, ""),
        "match": {
            "tenant": message.tenant or "*",
            "token": message.token or "*",
            "key": message.key or "*",
        },
        "limits": [
            {
                "name": limit.name,
                "algorithm": _ALGORITHMS.get(limit.algorithm, ""),
                "limit": limit.limit,
                "window_ms": limit.window_ms,
                **({"burst": limit.burst} if limit.burst else {}),
                **({"sub_windows": limit.sub_windows} if limit.sub_windows else {}),
            }
            for limit in message.limits
        ],
        "mode": _MODES[message.mode],
        "enforce_percent": float(
            message.enforce_percent if message.HasField("enforce_percent") else 100
        ),
        "enforce_sampling": _SAMPLING[message.enforce_sampling],
        "failure_mode": _FAILURE_MODES[message.failure_mode],
        "local_fallback": message.local_fallback if message.HasField("local_fallback") else True,
        "multi_region": message.multi_region,
    }


def rule_to_proto(stored: StoredRule) -> pb.Rule:
    rule: Rule = stored.rule
    out = pb.Rule(
        id=rule.id,
        description=rule.description,
        scope=_SCOPES_PB[rule.scope],
        tenant=rule.match.tenant,
        token=rule.match.token,
        key=rule.match.key,
        limits=[
            pb.Limit(
                name=limit.name,
                algorithm=_ALGORITHMS_PB[limit.algorithm],
                limit=limit.limit,
                window_ms=limit.window_ms,
                burst=limit.burst or 0,
                sub_windows=limit.sub_windows,
            )
            for limit in rule.limits
        ],
        mode=_MODES_PB[rule.mode],
        enforce_percent=math.floor(rule.enforce_percent),
        enforce_sampling=_SAMPLING_PB[rule.enforce_sampling],
        failure_mode=_FAILURE_MODES_PB[rule.failure_mode],
        local_fallback=rule.local_fallback,
        multi_region=rule.multi_region,
        revision=stored.revision,
        updated_by=stored.updated_by,
    )
    return out


def domain_to_proto(stored: StoredDomain, *, source: bool) -> svc.DomainConfig:
    config = stored.config
    return svc.DomainConfig(
        domain=config.domain,
        source=config.source if source else "",
        file_name=config.file_name,
        revision=stored.revision,
        updated_ms=stored.updated_ms,
        updated_by=stored.updated_by,
    )


def domain_plan(plan: DomainPlan) -> svc.PutDomainConfigResponse:
    return svc.PutDomainConfigResponse(
        domain=plan.domain,
        revision=plan.revision,
        changes=plan.changes,
        rules=[rule_to_proto(StoredRule(rule, plan.revision, 0, "")) for rule in plan.rules],
    )


def reset_after_ms(result: LimitResult) -> int:
    """How long until the limit is fully replenished if nobody consumes (from the decision:
    for a sliding window, until its newest used slot has left the window)."""
    return result.reset_after_ms


def _status(make: Callable[..., pb.LimitStatus], result: LimitResult) -> pb.LimitStatus:
    # Fields that are usually zero are set only when they are not: each keyword costs the
    # message constructor about as much as a Python call, and this runs per limit per check.
    status = make(
        rule_id=result.rule_id,
        limit_name=result.limit_name,
        allowed=result.allowed,
        remaining=max(0, result.remaining),
        limit=result.limit,
        reset_after_ms=reset_after_ms(result),
    )
    if result.retry_after_ms:
        status.retry_after_ms = result.retry_after_ms
    if result.mode is Mode.SHADOW:
        status.shadow = True
    return status


def limit_status(result: LimitResult) -> pb.LimitStatus:
    return _status(pb.LimitStatus, result)


def check_response(
    decision: Decision, make: Callable[..., svc.CheckResponse] = svc.CheckResponse
) -> svc.CheckResponse:
    """The reply to one check; ``make`` may build it in place (``results.add`` of a batch
    reply, which saves copying every message into the batch)."""
    deciding = decision.deciding
    remaining = decision.remaining
    out = make(
        allowed=decision.allowed,
        remaining=UNLIMITED_REMAINING if remaining == UNLIMITED else max(0, remaining),
        decided_by=f"{deciding.rule_id}/{deciding.limit_name}" if deciding else "",
    )
    if decision.retry_after_ms:
        out.retry_after_ms = decision.retry_after_ms
    if decision.degraded:
        out.degraded = True
    if decision.shadow_would_deny:
        out.shadow_would_deny = True
    add = out.limits.add  # builds each status in place: cheaper than a list of messages
    for result in decision.results:
        _status(add, result)
    return out
