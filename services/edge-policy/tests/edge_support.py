"""Helpers of the edge-policy tests (importable as `edge_support`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from mc_edge_policy.builder import BuiltBundle, build_bundle, seed_policy_sources
from mc_edge_policy.signatures import KeyRing, SigningKey

BUILD_TIME = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
Built = BuiltBundle


def build_seed(
    key: SigningKey,
    keyring: KeyRing,
    *,
    version: int,
    when: datetime = BUILD_TIME,
    valid_for: timedelta = timedelta(days=7),
) -> BuiltBundle:
    return build_bundle(
        seed_policy_sources(),
        key=key,
        verify_with=keyring,
        version=version,
        now=when,
        valid_for=valid_for,
    )


class Clock:
    """A settable clock for the PDP."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


ClockFn = Callable[[], datetime]
