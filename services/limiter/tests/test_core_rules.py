"""Rules as data: validation, persistence, operator calls with audit, and typed input errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from mc_common.errors import FailedPrecondition, InvalidArgument, MCError, NotFound
from mc_limiter.audit import MemoryAuditSink
from mc_limiter.decisions import UNLIMITED, CheckRequest
from mc_limiter.errors import (
    CostExceedsCapacityError,
    NoMatchingRuleError,
    RevisionMismatchError,
    RuleNotFoundError,
)
from mc_limiter.limiter import Limiter, UnmatchedPolicy
from mc_limiter.rules import Rule, parse_rule
from mc_limiter.throttle import ThrottleLevel

MakeLimiter = Callable[..., Awaitable[Limiter]]


def rule_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "api",
        "scope": "key",
        "match": {"tenant": "acme", "key": "/v1/*"},
        "limits": [{"name": "per_sec", "limit": 10, "window_ms": 1000}],
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"limits": [{"name": "x", "limit": 10, "window_ms": 0}]}, "limits[0].window_ms"),
        ({"limits": [{"name": "x", "limit": 0, "window_ms": 1000}]}, "limits[0].limit"),
        ({"limits": [{"name": "x", "limit": 1, "window_ms": 1, "burst": 0}]}, "limits[0].burst"),
        ({"limits": []}, "limits"),
        ({"scope": "galaxy"}, "scope"),
        ({"enforce_percent": 101}, "enforce_percent"),
        ({"id": ""}, "id"),
        ({"mode": "maybe"}, "mode"),
        ({"failure_mode": "explode"}, "failure_mode"),
        ({"colour": "red"}, "colour"),
        (
            {
                "limits": [
                    {
                        "name": "x",
                        "algorithm": "sliding_window",
                        "limit": 5,
                        "window_ms": 100,
                        "burst": 3,
                    }
                ]
            },
            "limits[0]",
        ),
        (
            {
                "limits": [
                    {"name": "x", "limit": 5, "window_ms": 100},
                    {"name": "x", "limit": 50, "window_ms": 1000},
                ]
            },
            "rule",
        ),
        ({"multi_region": True}, "rule"),
    ],
)
def test_invalid_rules_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_rule(rule_data(**overrides))
    assert info.value.grpc_code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in info.value.violations] == [field]


def test_valid_rule_defaults() -> None:
    rule = parse_rule(rule_data())
    assert rule.mode == "enforce" and rule.enforce_percent == 100.0
    assert rule.limits[0].capacity == 10
    assert rule.match.matches("acme", "any", "/v1/jobs")
    assert not rule.match.matches("acme", "any", "/v2/jobs")
    assert not rule.match.matches("other", "any", "/v1/jobs")


def test_error_hierarchy_carries_grpc_codes() -> None:
    # One hierarchy: the limiter's errors are leaves of mc_common's, with their reasons.
    assert issubclass(RuleNotFoundError, NotFound) and issubclass(RuleNotFoundError, MCError)
    assert RuleNotFoundError("x").grpc_code is grpc.StatusCode.NOT_FOUND
    assert RuleNotFoundError("x").reason == "ERROR_REASON_RULE_NOT_FOUND"
    assert NoMatchingRuleError("t", "", "k").grpc_code is grpc.StatusCode.NOT_FOUND
    assert isinstance(CostExceedsCapacityError("r", "l", 5, 3), FailedPrecondition)
    assert RevisionMismatchError("r", 1, 2).reason == "ERROR_REASON_REVISION_MISMATCH"


async def test_rule_store_crud_with_revisions(make_limiter: MakeLimiter) -> None:
    audit = MemoryAuditSink()
    limiter = await make_limiter(audit_sink=audit)
    stored = await limiter.put_rule(rule_data(), actor="ops", expected_revision=0)
    assert stored.revision == 1
    with pytest.raises(RevisionMismatchError):
        await limiter.put_rule(rule_data(), actor="ops", expected_revision=0)
    updated = await limiter.put_rule(rule_data(description="v2"), actor="ops", expected_revision=1)
    assert updated.revision == 2
    fetched = await limiter.get_rule("api")
    assert fetched.rule.description == "v2" and fetched.updated_by == "ops"
    await limiter.put_rule(
        Rule.model_validate(rule_data(id="other", match={"tenant": "zeta"})), actor="ops"
    )
    assert [s.rule.id for s in (await limiter.list_rules()).rules] == ["api", "other"]
    assert [s.rule.id for s in (await limiter.list_rules(tenant="acme")).rules] == ["api"]
    await limiter.delete_rule("api", actor="ops", expected_revision=2)
    with pytest.raises(RuleNotFoundError):
        await limiter.get_rule("api")
    with pytest.raises(RuleNotFoundError):
        await limiter.delete_rule("api", actor="ops")
    assert [e.action for e in audit.events] == [
        "limiter.rule.put",
        "limiter.rule.put",
        "limiter.rule.put",
        "limiter.rule.delete",
    ]
    assert audit.events[1].before is not None and audit.events[1].after["description"] == "v2"


async def test_other_replicas_pick_up_rule_changes(make_limiter: MakeLimiter) -> None:
    writer = await make_limiter()
    reader = await make_limiter(options={"config_refresh_ms": 50})
    await writer.put_rule(rule_data(), actor="ops")
    for _ in range(100):
        try:
            decision = await reader.check("acme", "tok", "/v1/jobs")
            break
        except NoMatchingRuleError:
            await asyncio.sleep(0.02)
    assert decision.allowed and decision.results[0].rule_id == "api"


async def test_bad_check_input_is_rejected_before_anything_happens(
    make_limiter: MakeLimiter,
) -> None:
    limiter = await make_limiter()
    await limiter.put_rule(rule_data(), actor="ops")
    with pytest.raises(InvalidArgument) as info:
        await limiter.check("", "tok", "/v1/jobs")
    assert info.value.violations[0].field == "tenant"
    with pytest.raises(InvalidArgument) as info:
        await limiter.check("acme", "tok", "/v1/jobs", -1)
    assert info.value.violations[0].field == "cost"
    with pytest.raises(NoMatchingRuleError):
        await limiter.check("acme", "tok", "/v2/unknown")
    with pytest.raises(CostExceedsCapacityError):
        await limiter.check("acme", "tok", "/v1/jobs", 11)
    with pytest.raises(InvalidArgument) as info:
        await limiter.check_batch(
            [CheckRequest("acme", "tok", "/v1/a"), CheckRequest("acme", "tok", "/v1/b", -3)]
        )
    assert info.value.violations[0].field == "requests[1].cost"
    usage = await limiter.usage("acme", "tok", "/v1/jobs")
    assert usage.results[0].used == 0, "nothing may have been consumed by rejected checks"


async def test_unmatched_policy_allow_admits_without_limits(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(options={"unmatched": UnmatchedPolicy.ALLOW})
    decision = await limiter.check("acme", "tok", "/nothing")
    assert decision.allowed and decision.remaining == UNLIMITED and decision.results == ()


async def test_throttle_levels_emit_audit_records(make_limiter: MakeLimiter) -> None:
    audit = MemoryAuditSink()
    limiter = await make_limiter(audit_sink=audit)
    event = await limiter.set_throttle("acme", "moderate", actor="incidents", reason="INC-7")
    assert (event.action, event.target, event.before, event.after, event.reason) == (
        "limiter.throttle.set",
        "acme",
        "none",
        "moderate",
        "INC-7",
    )
    assert limiter.throttle_level("acme") is ThrottleLevel.MODERATE
    await limiter.set_throttle("acme", ThrottleLevel.NONE, actor="incidents")
    assert audit.events[-1].before == "moderate" and audit.events[-1].after == "none"
    with pytest.raises(InvalidArgument):
        await limiter.set_throttle("acme", "extreme", actor="incidents")
    with pytest.raises(InvalidArgument):
        await limiter.set_throttle("acme", "mild", actor="")
    shadow = await limiter.set_global_shadow(True, actor="sre")
    assert shadow.action == "limiter.shadow.global" and shadow.after is True
    assert limiter.global_shadow


def test_rule_errors_carry_the_numbers_a_client_needs() -> None:
    """ErrorInfo.metadata has the ids and numbers (AIP-193), and PreconditionFailure says what."""
    from google.rpc import error_details_pb2

    from mc_limiter.errors import CostExceedsCapacityError, RevisionMismatchError

    revision = RevisionMismatchError("r1", expected=3, actual=5)
    [info, failure] = revision.details()
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert dict(info.metadata) == {
        "rule_id": "r1",
        "expected_revision": "3",
        "actual_revision": "5",
    }
    assert isinstance(failure, error_details_pb2.PreconditionFailure)
    assert failure.violations[0].type == "REVISION"
    capacity = CostExceedsCapacityError("r1", "per-minute", cost=50, capacity=10)
    info = capacity.details()[0]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.metadata["cost"], info.metadata["capacity"]) == ("50", "10")
    assert info.reason == "ERROR_REASON_COST_EXCEEDS_CAPACITY"
