"""Result types of a rate-limit check, plain data for the servicer to encode."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mc_limiter.rules import Limit, Mode

# The rule id under which a request's own limit (``CheckRequest.override``) is counted.
OVERRIDE_RULE_ID = "envoy-override"

# ``Decision.remaining`` when no rule matched (and the limiter admits unmatched requests).
UNLIMITED = -1


class Source(StrEnum):
    """Where a limit's verdict came from."""

    REDIS = "redis"  # the shard, atomically with the other limits of the decision
    FALLBACK = "fallback"  # in-process bucket while the shard is down
    FAIL_OPEN = "fail_open"  # shard down, no local fallback for this rule: admitted
    FAIL_CLOSED = "fail_closed"  # shard down, no local fallback for this rule: denied


@dataclass(frozen=True, slots=True)
class CheckRequest:
    """One check: ``cost`` units for ``(tenant, token, key)``; ``cost=0`` peeks.

    ``override`` (Envoy's per-descriptor limit) replaces the matching rules with this one
    limit, counted per (tenant, key) under the rule id ``OVERRIDE_RULE_ID``."""

    tenant: str
    token: str = ""
    key: str = ""
    cost: int = 1
    override: Limit | None = None


@dataclass(frozen=True, slots=True)
class LimitRef:
    rule_id: str
    limit_name: str


# LimitResult and Decision are made once per limit and per decision on the hot path, where a
# frozen dataclass's __init__ (object.__setattr__ per field) cost 4x a plain one: they are not
# frozen, but nothing changes them after the limiter returns them.


@dataclass(slots=True)
class LimitResult:
    """One limit's verdict. ``limit`` is the effective (throttled) limit; ``remaining`` and
    ``used`` are after this request if it was admitted; ``mode`` is the effective mode for
    this request (a rule at ``enforce_percent`` < 100 shows ``shadow`` when not sampled)."""

    rule_id: str
    limit_name: str
    mode: Mode
    allowed: bool
    remaining: int
    retry_after_ms: int
    used: int
    limit: int
    window_ms: int
    source: Source
    # Until nothing is in use (the whole limit available again) if nobody consumes, ms.
    reset_after_ms: int = 0

    @property
    def ref(self) -> LimitRef:
        return LimitRef(self.rule_id, self.limit_name)


@dataclass(slots=True)
class Decision:
    """The answer to a check.

    ``allowed`` is false iff an enforced limit denied; then nothing was consumed and
    ``retry_after_ms`` (ms, rounded up) is the wait after which every denying limit would
    admit this cost if nobody else consumed meanwhile. ``remaining`` is the minimum over the
    enforced limits (over all limits if none is enforced; ``UNLIMITED`` if no rule matched).
    ``deciding`` is the denying limit with the longest wait, or when admitted the enforced
    limit with the least remaining. ``shadow_would_deny`` is true if a shadow-mode limit
    would have denied. ``degraded`` is true if any verdict came from outside Redis.
    ``now_ms`` is the deciding clock (Redis ``TIME``, or local time when degraded).
    """

    allowed: bool
    retry_after_ms: int
    remaining: int
    deciding: LimitRef | None
    results: tuple[LimitResult, ...]
    shadow_would_deny: bool
    degraded: bool
    now_ms: int
