"""The two limit algorithms in plain Python: the reference for the Lua script in scripts.py
and the engine of the in-process fallback used while a shard is down.

Time is in microseconds (float). Both algorithms answer, for a request of ``unit`` units,
whether it fits now, how many units remain, how long to wait until it would fit
(``retry_us``, assuming nobody else consumes meanwhile) and how much is in use.

GCRA (generic cell rate algorithm, a token bucket stored as one "theoretical arrival time"):
emission interval ``T = window / limit``, tolerance ``tau = burst * T``. A request of ``c``
units fits iff ``max(TAT, now) + c*T - now <= tau``; admitting it sets
``TAT = max(TAT, now) + c*T``. Exact: over any interval of length ``d`` it admits at most
``burst + d / T`` units.

Sliding window (weighted sub-windows): the window is split into ``N = sub_windows`` slots of
``sw = window / N``; each slot keeps a count. The usage estimate at ``now`` is the sum of the
``N`` slots overlapping the window fully (the current one included) plus the oldest, partially
overlapping slot weighted by the part of it still inside the window, as if its requests were
spread evenly. ``N = 1`` is the classic two-bucket approximation (previous + current window).
Error bound: the estimate is exact except for the oldest slot, so the units admitted in ANY
interval of length ``window`` exceed ``limit`` by at most the count of that one slot
(``<= limit / N`` when traffic at the limit is spread evenly across slots, ``limit`` in the
adversarial case of a whole slot's traffic packed at its end). Per slot-aligned window it never
exceeds ``limit``, since the estimate always includes the current slots in full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

EPSILON = 1e-6


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Outcome of evaluating one limit for one request (before any consumption)."""

    allowed: bool
    remaining: int  # units left after this request if admitted, else units left now
    retry_us: float  # 0 when allowed
    used: int  # units in use after this request if admitted, else now
    # Until nothing is in use any more (the whole limit available again) if nobody consumes.
    reset_us: float = 0.0


@dataclass(slots=True)
class GcraState:
    tat: float = 0.0

    def evaluate(
        self, now: float, unit: int, limit: int, window_us: float, burst: int, consume: bool
    ) -> Evaluation:
        emission = window_us / limit
        tau = burst * emission
        base = max(self.tat, now)
        new_tat = base + unit * emission
        allowed = new_tat - now <= tau + EPSILON
        if allowed and consume:
            self.tat = new_tat
            in_use = new_tat - now
        else:
            in_use = base - now
        remaining = max(0, math.floor((tau - in_use) / emission + EPSILON))
        used = max(0, math.ceil(in_use / emission - EPSILON))
        retry = 0.0 if allowed else new_tat - now - tau
        return Evaluation(allowed, remaining, retry, used, max(0.0, in_use))


@dataclass(slots=True)
class SlidingWindowState:
    counts: dict[int, int] = field(default_factory=dict)

    def evaluate(
        self,
        now: float,
        unit: int,
        limit: int,
        window_us: float,
        sub_windows: int,
        consume: bool,
        extra: dict[int, int] | None = None,
    ) -> Evaluation:
        sw = window_us / sub_windows
        idx = math.floor(now / sw)
        frac = (now - idx * sw) / sw
        slots = [
            self.counts.get(i, 0) + (extra.get(i, 0) if extra else 0)
            for i in range(idx - sub_windows, idx + 1)
        ]
        estimate = sum(slots[1:]) + slots[0] * (1.0 - frac)
        allowed = estimate + unit <= limit + EPSILON
        if allowed and consume:
            self.counts[idx] = self.counts.get(idx, 0) + unit
            for old in [i for i in self.counts if i < idx - sub_windows]:
                del self.counts[old]
            estimate += unit
        remaining = max(0, math.floor(limit - estimate + EPSILON))
        used = max(0, math.ceil(estimate - EPSILON))
        retry = 0.0
        if not allowed:
            retry = sliding_retry_at(slots, idx, frac, sw, unit, limit) - now
        newest = idx if allowed and consume else None
        if newest is None:
            newest = next((idx - k for k, n in enumerate(reversed(slots)) if n > 0), None)
        reset = 0.0 if newest is None else sliding_reset_at(newest, sw, sub_windows) - now
        return Evaluation(allowed, remaining, retry, used, reset)


def sliding_reset_at(newest: int, sw: float, sub_windows: int) -> float:
    """When the newest slot holding units (``newest``) has left the window: from then on the
    estimate is 0 and the whole limit is available. (A slot ``k`` counts while the current
    slot is at most ``k + sub_windows``.)"""
    return (newest + sub_windows + 1) * sw


def sliding_retry_at(
    slots: list[int], idx: int, frac: float, sw: float, unit: int, limit: int
) -> float:
    """Earliest time at which ``unit`` fits if nothing else is admitted meanwhile.

    Step ``s`` is the slot ``idx + s``; during it the oldest partial slot is ``slots[s]`` and
    the full ones ``slots[s+1:]``; the estimate falls linearly as the partial slot slides out.
    """
    n = len(slots) - 1
    for step in range(n + 1):
        full = sum(slots[step + 1 :])
        if full + unit > limit + EPSILON:
            continue
        oldest = slots[step]
        start = frac if step == 0 else 0.0
        need = full + oldest + unit - limit
        g = start if need <= 0 or oldest <= 0 else max(start, need / oldest)
        return (idx + step + g) * sw
    return (idx + n + 1) * sw
