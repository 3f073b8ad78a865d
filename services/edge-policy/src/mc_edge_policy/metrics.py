"""Prometheus view of the PDP, computed when scraped (nothing on the decision path).

`mc_edge_policy_bundle_state{state}` is 1 for the current state (serving, stale, empty): alert
on stale; OPA's health endpoint says healthy while stale (opa#3554), this does not.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mc_edge_policy.pdp import PdpState, PolicyDecisionPoint


class PdpCollector(Collector):
    """Bundle state, version, freshness and rejections of one PDP."""

    def __init__(self, pdp: PolicyDecisionPoint) -> None:
        self._pdp = pdp

    def collect(self) -> Iterator[Metric]:
        status = self._pdp.status()
        state = GaugeMetricFamily(
            "mc_edge_policy_bundle_state",
            "1 for the PDP's current state: serving, stale (failing closed) or empty.",
            labels=["state"],
        )
        for value in PdpState:
            state.add_metric([value.value], 1.0 if status.state is value else 0.0)
        yield state
        yield GaugeMetricFamily(
            "mc_edge_policy_bundle_version",
            "Signed version of the active bundle (0 when none).",
            value=float(status.bundle_version),
        )
        fresh = status.fresh_until.timestamp() if status.fresh_until else 0.0
        yield GaugeMetricFamily(
            "mc_edge_policy_bundle_fresh_until_seconds",
            "Unix time at which the active bundle's signed metadata expires (0 when none).",
            value=fresh,
        )
        rejections = CounterMetricFamily(
            "mc_edge_policy_bundle_rejections",
            "Bundles refused and quarantined, by reason.",
            labels=["kind"],
        )
        for kind, count in self._pdp.rejections.items():
            rejections.add_metric([kind.value], float(count))
        yield rejections


def pdp_registry(pdp: PolicyDecisionPoint) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(PdpCollector(pdp))
    return registry
