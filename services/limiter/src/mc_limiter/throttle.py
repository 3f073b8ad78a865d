"""Per-tenant throttle levels: an operator (or the incidents service) scales one tenant's limits.

A level multiplies every limit and burst that the tenant's checks evaluate. Shared
``global``-scope pools are scaled so that a throttle never costs the other tenants: a
throttled tenant sees the pool as full sooner, but each unit it takes costs the pool one unit.
For a sliding-window pool that is the scaled limit; for a GCRA pool only the burst (the
tolerance) is scaled and the emission interval stays the pool's (scaling the rate would make
each of the tenant's units advance the shared bucket by 1/factor units). Factors:

======== ====== ===============================================
level    factor meaning
======== ====== ===============================================
none     1.00   normal service
mild     0.75   first response to a cost anomaly
moderate 0.50   sustained anomaly / noisy neighbour
hard     0.10   incident containment; keeps the tenant alive
======== ====== ===============================================

Scaled values are ``max(1, floor(value * factor))`` so a throttled limit never reaches zero
(use a rule with ``limit=1`` and a long window, or a policy deny, to block a tenant outright).
"""

from __future__ import annotations

import math
from enum import StrEnum


class ThrottleLevel(StrEnum):
    NONE = "none"
    MILD = "mild"
    MODERATE = "moderate"
    HARD = "hard"


THROTTLE_FACTORS: dict[ThrottleLevel, float] = {
    ThrottleLevel.NONE: 1.0,
    ThrottleLevel.MILD: 0.75,
    ThrottleLevel.MODERATE: 0.5,
    ThrottleLevel.HARD: 0.1,
}


def scale(value: int, factor: float) -> int:
    """Scale a limit or burst by ``factor``, never below 1."""
    if factor >= 1.0:
        return value
    return max(1, math.floor(value * factor))
