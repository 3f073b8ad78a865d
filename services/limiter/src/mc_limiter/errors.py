"""Typed domain errors of the limiter, built on the shared `mc_common.errors` hierarchy.

Each is an `MCError`, so the server's one error interceptor maps it to its gRPC status with
`google.rpc` details (BadRequest field violations for invalid input); no RPC needs its own
try/except. `code` repeats the status name for callers that use the domain without gRPC.
"""

from __future__ import annotations

from mc_common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MCError,
    NotFound,
    Unavailable,
)

__all__ = [
    "CostExceedsCapacityError",
    "FailedPreconditionError",
    "FieldViolation",
    "InvalidArgumentError",
    "LimiterError",
    "NoMatchingRuleError",
    "NotFoundError",
    "RevisionMismatchError",
    "RuleNotFoundError",
    "UnavailableError",
]


class LimiterError(MCError):
    """Base of every error the limiter raises on purpose."""

    code: str = "INTERNAL"
    # Set by check_batch: which request of the batch failed.
    request_index: int | None = None


class InvalidArgumentError(InvalidArgument, LimiterError):
    """The request or rule is malformed; nothing was changed or consumed."""

    code = "INVALID_ARGUMENT"

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message, violations or [])

    @classmethod
    def for_field(cls, field: str, description: str) -> InvalidArgumentError:
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class NotFoundError(NotFound, LimiterError):
    """A named object (rule, tenant setting) does not exist."""

    code = "NOT_FOUND"


class RuleNotFoundError(NotFoundError):
    """No rule with this id is stored."""

    def __init__(self, rule_id: str) -> None:
        super().__init__(f"rule {rule_id!r} not found", reason="RULE_NOT_FOUND")
        self.rule_id = rule_id


class NoMatchingRuleError(NotFoundError):
    """No rule matches the (tenant, token, key) of a check and the limiter is configured to
    treat that as an error (``UnmatchedPolicy.ERROR``) rather than to allow."""

    def __init__(self, tenant: str, token: str, key: str) -> None:
        super().__init__(
            f"no rate-limit rule matches tenant={tenant!r} token={token!r} key={key!r}",
            reason="NO_MATCHING_RULE",
        )
        self.tenant = tenant
        self.token = token
        self.key = key


class FailedPreconditionError(FailedPrecondition, LimiterError):
    """The request is well formed but cannot succeed in the current state (for example a
    stale ``expected_revision``, or a cost larger than a limit's capacity, which no amount
    of waiting would ever admit)."""

    code = "FAILED_PRECONDITION"


class RevisionMismatchError(FailedPreconditionError):
    """Optimistic-concurrency check failed on a rule write."""

    def __init__(self, rule_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"rule {rule_id!r} is at revision {actual}, expected {expected}; re-read and retry",
            reason="REVISION_MISMATCH",
        )
        self.rule_id = rule_id
        self.expected = expected
        self.actual = actual


class CostExceedsCapacityError(FailedPreconditionError):
    """``cost`` is larger than an enforced limit's (throttled) capacity: never admissible."""

    def __init__(self, rule_id: str, limit_name: str, cost: int, capacity: int) -> None:
        super().__init__(
            f"cost {cost} exceeds capacity {capacity} of limit {rule_id}/{limit_name}; "
            "it can never be admitted",
            reason="COST_EXCEEDS_CAPACITY",
        )
        self.rule_id = rule_id
        self.limit_name = limit_name
        self.cost = cost
        self.capacity = capacity


class UnavailableError(Unavailable, LimiterError):
    """A store the operation needs (the config Redis for admin calls) is unreachable.

    Checks never raise this: they degrade to the local fallback or the rule's failure mode.
    """

    code = "UNAVAILABLE"
