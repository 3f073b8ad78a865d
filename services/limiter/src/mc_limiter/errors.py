"""Typed domain errors of the limiter; each carries the gRPC status name the servicer maps it to.

The servicer (or one error interceptor) turns ``err.code`` into a status code and
``err.violations`` into ``google.rpc.BadRequest`` field violations; no RPC needs its own
try/except.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field: ``field`` is a dotted path (``limits[0].window_ms``)."""

    field: str
    description: str


class LimiterError(Exception):
    """Base of every error the limiter raises on purpose.

    ``code`` is the gRPC status name (``grpc.StatusCode[code]`` gives the enum member).
    """

    code: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(LimiterError):
    """The request or rule is malformed; nothing was changed or consumed."""

    code = "INVALID_ARGUMENT"

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations: list[FieldViolation] = violations or []

    @classmethod
    def for_field(cls, field: str, description: str) -> InvalidArgumentError:
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class NotFoundError(LimiterError):
    """A named object (rule, tenant setting) does not exist."""

    code = "NOT_FOUND"


class RuleNotFoundError(NotFoundError):
    """No rule with this id is stored."""

    def __init__(self, rule_id: str) -> None:
        super().__init__(f"rule {rule_id!r} not found")
        self.rule_id = rule_id


class NoMatchingRuleError(NotFoundError):
    """No rule matches the (tenant, token, key) of a check and the limiter is configured to
    treat that as an error (``UnmatchedPolicy.ERROR``) rather than to allow."""

    def __init__(self, tenant: str, token: str, key: str) -> None:
        super().__init__(
            f"no rate-limit rule matches tenant={tenant!r} token={token!r} key={key!r}"
        )
        self.tenant = tenant
        self.token = token
        self.key = key


class FailedPreconditionError(LimiterError):
    """The request is well formed but cannot succeed in the current state (for example a
    stale ``expected_revision``, or a cost larger than a limit's capacity, which no amount
    of waiting would ever admit)."""

    code = "FAILED_PRECONDITION"


class RevisionMismatchError(FailedPreconditionError):
    """Optimistic-concurrency check failed on a rule write."""

    def __init__(self, rule_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"rule {rule_id!r} is at revision {actual}, expected {expected}; re-read and retry"
        )
        self.rule_id = rule_id
        self.expected = expected
        self.actual = actual


class CostExceedsCapacityError(FailedPreconditionError):
    """``cost`` is larger than an enforced limit's (throttled) capacity: never admissible."""

    def __init__(self, rule_id: str, limit_name: str, cost: int, capacity: int) -> None:
        super().__init__(
            f"cost {cost} exceeds capacity {capacity} of limit {rule_id}/{limit_name}; "
            "it can never be admitted"
        )
        self.rule_id = rule_id
        self.limit_name = limit_name
        self.cost = cost
        self.capacity = capacity


class UnavailableError(LimiterError):
    """A store the operation needs (the config Redis for admin calls) is unreachable.

    Checks never raise this: they degrade to the local fallback or the rule's failure mode.
    """

    code = "UNAVAILABLE"
