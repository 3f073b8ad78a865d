"""Prometheus instruments of the limiter, created on a registry the caller passes in.

Labels stay low-cardinality on purpose: rule ids and modes are bounded by configuration, while
tenants and keys are not, so per-tenant detail goes to the deny records instead.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CHECK_SECONDS_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip


class LimiterMetrics:
    """``mc_rl_check_seconds`` (histogram, label ``path``: redis | fallback | batch),
    ``mc_rl_denies_total`` (labels ``rule``, ``mode``: enforce = real denials,
    shadow = would-denies), ``mc_rl_shadow_would_deny_total`` (label ``rule``) and
    ``mc_rl_degraded`` (gauge per ``shard``, 1 while its breaker is open)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.check_seconds = Histogram(
            "mc_rl_check_seconds",
            "Latency of one rate-limit decision in seconds.",
            ["path"],
            buckets=CHECK_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.denies = Counter(
            "mc_rl_denies_total",
            "Denied checks per rule; mode=shadow counts would-denies that were admitted.",
            ["rule", "mode"],
            registry=self.registry,
        )
        self.shadow_would_deny = Counter(
            "mc_rl_shadow_would_deny_total",
            "Checks a shadow-mode limit would have denied.",
            ["rule"],
            registry=self.registry,
        )
        self.config_stale = Gauge(
            "mc_rl_config_stale",
            "1 while the config store was unreachable since start-up and the limiter serves the "
            "last saved configuration (or none).",
            registry=self.registry,
        )
        self.breaker_trips = Counter(
            "mc_rl_breaker_trips_total",
            "Times a shard's circuit breaker opened (the shard was declared down).",
            ["shard"],
            registry=self.registry,
        )
        self.degraded = Gauge(
            "mc_rl_degraded",
            "1 while the shard is unreachable and decisions use the local fallback.",
            ["shard"],
            registry=self.registry,
        )
