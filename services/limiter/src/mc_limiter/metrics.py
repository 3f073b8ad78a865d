"""Prometheus instruments of the limiter, created on a registry the caller passes in.

Labels stay low-cardinality on purpose: rule ids and modes are bounded by configuration, while
tenants and keys are not, so per-tenant detail goes to the deny records instead.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CHECK_MS_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 1000.0)


class LimiterMetrics:
    """``mc_rl_check_ms`` (histogram, label ``path``: redis | fallback | batch),
    ``mc_rl_denies_total`` (labels ``rule``, ``mode``: enforce = real denials,
    shadow = would-denies), ``mc_rl_shadow_would_deny_total`` (label ``rule``) and
    ``mc_rl_degraded`` (gauge per ``shard``, 1 while its breaker is open)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.check_ms = Histogram(
            "mc_rl_check_ms",
            "Latency of one rate-limit decision in milliseconds.",
            ["path"],
            buckets=CHECK_MS_BUCKETS,
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
        self.degraded = Gauge(
            "mc_rl_degraded",
            "1 while the shard is unreachable and decisions use the local fallback.",
            ["shard"],
            registry=self.registry,
        )
