"""Tuning of one limiter instance (the service's settings map onto ``LimiterOptions``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class UnmatchedPolicy(StrEnum):
    """What a check does when no rule matches: raise ``NoMatchingRuleError`` (NOT_FOUND) or
    admit with ``remaining = UNLIMITED`` (what Envoy's RLS expects)."""

    ERROR = "error"
    ALLOW = "allow"


@dataclass(frozen=True, slots=True)
class LimiterOptions:
    """Tuning of one limiter instance.

    ``fallback_share`` is this replica's share of its region (``1 / replicas``); local
    fallback buckets get ``limit * fallback_share`` (further divided by the number of regions
    for multi-region rules). ``socket_timeout_ms`` applies to clients made by ``from_urls``.
    """

    key_prefix: str = "mc:rl"
    region: str = "local"
    socket_timeout_ms: int = 100
    probe_interval_ms: int = 250
    config_refresh_ms: int = 1000
    region_sync_ms: int = 150
    vnodes: int = 160
    fallback_enabled: bool = True
    fallback_share: float = 1.0
    fallback_max_keys: int = 100_000
    unmatched: UnmatchedPolicy = UnmatchedPolicy.ERROR
    deny_flush_ms: int = 1000
    plan_cache_size: int = 10_000
    batch_wait_us: int = 0  # see CheckBatcher: how long busy unary checks wait for company
    # Added to a script call's deadline per decision it carries, on top of the socket timeout
    # (a busy shard is not a dead one; see redis_client._Resp).
    decision_timeout_us: int = 500
    # Where the last good configuration is kept (config_cache.py); None: nowhere.
    config_snapshot_path: str | None = None

    def __post_init__(self) -> None:
        if not self.key_prefix or any(c in self.key_prefix for c in "{}"):
            raise ValueError("key_prefix must be non-empty and contain no braces")
        if not 0.0 < self.fallback_share <= 1.0:
            raise ValueError("fallback_share must be in (0, 1]")
        if self.batch_wait_us < 0:
            raise ValueError("batch_wait_us must be >= 0")
