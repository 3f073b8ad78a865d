"""Rate-limit rules as data: which requests a rule matches, what it counts, and its limits.

A check for ``(tenant, token, key)`` evaluates every limit of every rule whose matcher matches
(like Envoy's descriptors, all matching rules apply, there is no override order). A rule's
``scope`` says which counter the request lands in:

* ``global``    one counter for everything the rule matches, across tenants;
* ``tenant``    one counter per tenant;
* ``token``     one counter per (tenant, token);
* ``key``       one counter per (tenant, key), shared by all tokens;
* ``token_key`` one counter per (tenant, token, key).

Matchers are glob patterns (``*`` any run, ``?`` one character; ``*`` alone matches all).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import translate
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from validate import validate_pb2

from mc.limiter.v1 import limiter_pb2
from mc_common.errors import FieldViolation, InvalidArgument


def _proto_rules(message: Any, field: str) -> Any:
    """The PGV rules the API declares for `message.field`: request bounds live in the protos,
    and rules that do not come through the API (rules files) get the same ones."""
    return message.DESCRIPTOR.fields_by_name[field].GetOptions().Extensions[validate_pb2.rules]


MAX_WINDOW_MS = int(_proto_rules(limiter_pb2.Limit, "window_ms").uint64.lte)
MAX_LIMIT = 1_000_000_000
MAX_SUB_WINDOWS = int(_proto_rules(limiter_pb2.Limit, "sub_windows").uint32.lte)
MAX_LIMITS_PER_RULE = int(_proto_rules(limiter_pb2.Rule, "limits").repeated.max_items)

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
RuleId = Annotated[str, Field(pattern=_NAME_PATTERN)]
LimitName = Annotated[str, Field(pattern=_NAME_PATTERN)]
Pattern = Annotated[str, Field(min_length=1, max_length=256)]


class Algorithm(StrEnum):
    """``gcra``: token bucket (GCRA, one timestamp per counter), smooth rate with ``burst``.
    ``sliding_window``: weighted sub-window counters; counts per window, see algorithms.py."""

    GCRA = "gcra"
    SLIDING_WINDOW = "sliding_window"


class Scope(StrEnum):
    GLOBAL = "global"
    TENANT = "tenant"
    TOKEN = "token"
    KEY = "key"
    TOKEN_KEY = "token_key"


class Mode(StrEnum):
    """``enforce`` denies over-limit requests; ``shadow`` only counts would-denies."""

    ENFORCE = "enforce"
    SHADOW = "shadow"


class Sampling(StrEnum):
    """How ``enforce_percent`` picks the enforced requests.

    ``hash``: deterministic on hash(rule id, tenant, token, key): a given caller is either
    always or never enforced, so a rollout from 10% to 100% grows a stable set of callers and
    their experience is consistent. ``random``: an independent draw per request.
    """

    HASH = "hash"
    RANDOM = "random"


class FailureMode(StrEnum):
    """What a check does for this rule when its shard is unreachable and no local fallback
    decision is possible (``local_fallback=False`` on the rule, or fallback disabled on the
    limiter): ``fail_open`` admits, ``fail_closed`` denies with a retry hint."""

    FAIL_OPEN = "fail_open"
    FAIL_CLOSED = "fail_closed"


class Limit(BaseModel):
    """One limit: at most ``limit`` units per ``window_ms``.

    For ``gcra`` the steady rate is ``limit / window_ms`` and ``burst`` (default ``limit``)
    is the bucket capacity, i.e. how many units may be taken at once after an idle period.
    For ``sliding_window``, ``sub_windows`` (default 1 = the classic two-bucket
    approximation) trades Redis memory for accuracy, see ``algorithms.py``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: LimitName
    algorithm: Algorithm = Algorithm.GCRA
    limit: int = Field(ge=1, le=MAX_LIMIT)
    window_ms: int = Field(ge=1, le=MAX_WINDOW_MS)
    burst: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    sub_windows: int = Field(default=1, ge=1, le=MAX_SUB_WINDOWS)

    @model_validator(mode="after")
    def _check_algorithm_fields(self) -> Self:
        if self.algorithm is Algorithm.SLIDING_WINDOW and self.burst is not None:
            raise ValueError("burst applies to gcra only; sliding_window capacity is limit")
        if self.algorithm is Algorithm.GCRA and self.sub_windows != 1:
            raise ValueError("sub_windows applies to sliding_window only")
        if self.window_ms < self.sub_windows:
            raise ValueError("window_ms / sub_windows must be at least 1 ms")
        return self

    @property
    def capacity(self) -> int:
        """The most units one request can ever take (burst for gcra, limit otherwise)."""
        if self.algorithm is Algorithm.GCRA:
            return self.burst if self.burst is not None else self.limit
        return self.limit


class Matcher(BaseModel):
    """Glob patterns on the request's tenant, token and key (``*`` matches anything).

    Checks find rules through ``rule_index.RuleIndex``; these methods serve administration
    (listing, invalidating cached plans) and compile each pattern once per matcher."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: Pattern = "*"
    token: Pattern = "*"
    key: Pattern = "*"

    def matches(self, tenant: str, token: str, key: str) -> bool:
        t = self._compiled()
        return t[0](tenant) and t[1](token) and t[2](key)

    def matches_tenant(self, tenant: str) -> bool:
        return self._compiled()[0](tenant)

    @property
    def literal_tenant(self) -> str | None:
        """The tenant if the pattern has no wildcard (used to index rules by tenant)."""
        return None if _is_glob(self.tenant) else self.tenant

    def predicate(self) -> Callable[[str, str, str], bool]:
        """``matches`` with the patterns compiled now, for testing many requests."""
        t, o, k = self._compiled()
        return lambda tenant, token, key: t(tenant) and o(token) and k(key)

    def _compiled(self) -> tuple[_Test, _Test, _Test]:
        tests = _MATCHER_TESTS.get(self)
        if tests is None:
            tests = _MATCHER_TESTS[self] = (
                _test(self.tenant),
                _test(self.token),
                _test(self.key),
            )
        return tests


class Rule(BaseModel):
    """A rate-limit rule: a matcher, a counting scope and one or more limits.

    Several limits on one rule (``10/s`` and ``250/day``) are checked and consumed together,
    all or none. ``mode=shadow`` (or the limiter's global shadow switch) makes the rule count
    would-denies but always admit. In ``enforce`` mode, ``enforce_percent`` < 100 enforces only
    that share of requests (picked per ``enforce_sampling``) and shadows the rest, for gradual
    roll-out. ``multi_region`` makes the limit global across regions (sliding_window only):
    each region counts locally plus the last usage synced from its peers.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: RuleId
    description: str = Field(default="", max_length=1024)
    scope: Scope
    match: Matcher = Matcher()
    limits: list[Limit] = Field(min_length=1, max_length=MAX_LIMITS_PER_RULE)
    mode: Mode = Mode.ENFORCE
    enforce_percent: float = Field(default=100.0, ge=0.0, le=100.0)
    enforce_sampling: Sampling = Sampling.HASH
    failure_mode: FailureMode = FailureMode.FAIL_OPEN
    local_fallback: bool = True
    multi_region: bool = False

    @model_validator(mode="after")
    def _check_limits(self) -> Self:
        names = [limit.name for limit in self.limits]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"limit names must be unique within a rule: {duplicates}")
        if self.multi_region and any(
            limit.algorithm is not Algorithm.SLIDING_WINDOW for limit in self.limits
        ):
            raise ValueError("multi_region rules need sliding_window limits (counts add up)")
        return self


@dataclass(frozen=True, slots=True)
class StoredRule:
    """A rule as persisted: ``revision`` increases on every write (optimistic concurrency)."""

    rule: Rule
    revision: int
    updated_ms: int
    updated_by: str


def parse_rule(data: Mapping[str, Any]) -> Rule:
    """Validate a rule from plain data, raising ``InvalidArgument`` with field paths."""
    try:
        return Rule.model_validate(data)
    except ValidationError as exc:
        raise invalid_argument_from(exc) from None


def invalid_argument_from(exc: ValidationError, prefix: str = "") -> InvalidArgument:
    violations = [
        FieldViolation(_field_path(err["loc"], prefix), err["msg"]) for err in exc.errors()
    ]
    summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return InvalidArgument(f"invalid rule: {summary}", violations)


def _field_path(loc: tuple[int | str, ...], prefix: str) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else part
    return path or "rule"


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


_Test = Callable[[str], bool]
# Compiled tests of the matchers alive (equal matchers share theirs); no size cliff.
_MATCHER_TESTS: weakref.WeakKeyDictionary[Matcher, tuple[_Test, _Test, _Test]] = (
    weakref.WeakKeyDictionary()
)


def _test(pattern: str) -> _Test:
    """A predicate for one glob: constant for ``*``, equality without wildcards, else the
    compiled fnmatch expression."""
    if pattern == "*":
        return _always
    if not _is_glob(pattern):
        return pattern.__eq__
    head, tail = pattern[:-1], pattern[1:]
    if pattern.endswith("*") and not _is_glob(head):
        return lambda value: value.startswith(head)
    if pattern.startswith("*") and not _is_glob(tail):
        return lambda value: value.endswith(tail)
    regex = re.compile(translate(pattern))
    return lambda value: regex.match(value) is not None


def _always(_: str) -> bool:
    return True
