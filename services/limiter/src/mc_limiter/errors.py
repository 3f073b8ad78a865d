"""The limiter's specific errors: leaves of the one ``mc_common.errors`` hierarchy.

The limiter raises ``mc_common.errors`` classes (``InvalidArgument``, ``NotFound``,
``FailedPrecondition``, ``Unavailable``) directly; the classes below exist only where a
caller needs the error's data (which rule, which revision, which capacity). Each carries its
gRPC code and ``ErrorInfo`` reason through its ``mc_common`` base, so the server's one error
interceptor maps it without per-RPC handling.
"""

from __future__ import annotations

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import FailedPrecondition, NotFound, PreconditionViolation

__all__ = [
    "CostExceedsCapacityError",
    "LeaseExpiredError",
    "NoMatchingRuleError",
    "RevisionMismatchError",
    "RuleNotFoundError",
]


class RuleNotFoundError(NotFound):
    """No rule with this id is stored."""

    default_reason = ErrorReason.ERROR_REASON_RULE_NOT_FOUND

    def __init__(self, rule_id: str) -> None:
        super().__init__(f"rule {rule_id!r} not found", metadata={"rule_id": rule_id})
        self.rule_id = rule_id


class NoMatchingRuleError(NotFound):
    """No rule matches the (tenant, token, key) of a check and the limiter is configured to
    treat that as an error (``UnmatchedPolicy.ERROR``) rather than to allow."""

    default_reason = ErrorReason.ERROR_REASON_NO_MATCHING_RULE

    def __init__(self, tenant: str, token: str, key: str) -> None:
        super().__init__(
            f"no rate-limit rule matches tenant={tenant!r} token={token!r} key={key!r}",
            metadata={"key": key},  # the caller's own key; tenant and token stay in the message
        )
        self.tenant = tenant
        self.token = token
        self.key = key


class RevisionMismatchError(FailedPrecondition):
    """Optimistic-concurrency check failed on a rule write."""

    default_reason = ErrorReason.ERROR_REASON_REVISION_MISMATCH

    def __init__(self, rule_id: str, expected: int, actual: int) -> None:
        message = (
            f"rule {rule_id!r} is at revision {actual}, expected {expected}; re-read and retry"
        )
        super().__init__(
            message,
            [PreconditionViolation("REVISION", f"rules/{rule_id}", message)],
            metadata={
                "rule_id": rule_id,
                "expected_revision": str(expected),
                "actual_revision": str(actual),
            },
        )
        self.rule_id = rule_id
        self.expected = expected
        self.actual = actual


class CostExceedsCapacityError(FailedPrecondition):
    """``cost`` is larger than an enforced limit's (throttled) capacity: never admissible,
    however long the caller waits."""

    default_reason = ErrorReason.ERROR_REASON_COST_EXCEEDS_CAPACITY

    def __init__(self, rule_id: str, limit_name: str, cost: int, capacity: int) -> None:
        message = (
            f"cost {cost} exceeds capacity {capacity} of limit {rule_id}/{limit_name}; "
            "it can never be admitted"
        )
        super().__init__(
            message,
            [PreconditionViolation("CAPACITY", f"rules/{rule_id}/limits/{limit_name}", message)],
            metadata={
                "rule_id": rule_id,
                "limit": limit_name,
                "cost": str(cost),
                "capacity": str(capacity),
            },
        )
        self.rule_id = rule_id
        self.limit_name = limit_name
        self.cost = cost
        self.capacity = capacity


class LeaseExpiredError(FailedPrecondition):
    """A fair-share grant's lease ran out and its slot was reclaimed."""

    default_reason = ErrorReason.ERROR_REASON_LEASE_EXPIRED
