"""In-process buckets that decide while a shard is unreachable (degraded mode).

Each replica keeps its own buckets, sized at its share of the limit: ``share`` (the replica's
fraction of its region, ``1 / replicas``) times ``1 / regions`` for multi-region rules. Over
all replicas and regions the admitted total then stays near the configured limit, even though
nobody coordinates. Buckets start empty when the breaker trips and are dropped when the shard
recovers (counts made here are not copied back to Redis: the transition can admit at most one
share-sized window extra). The table is an LRU bounded by ``max_keys``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mc_limiter.algorithms import Evaluation, GcraState, SlidingWindowState
from mc_limiter.rules import Algorithm


@dataclass(frozen=True, slots=True)
class FallbackItem:
    """One limit to decide locally: effective (throttled, share-scaled) numbers."""

    key: str
    algorithm: Algorithm
    limit: int
    window_us: float
    burst: int
    sub_windows: int
    enforce: bool


class LocalFallback:
    def __init__(
        self, max_keys: int = 100_000, clock_us: Callable[[], float] | None = None
    ) -> None:
        self._max = max_keys
        self._states: OrderedDict[str, GcraState | SlidingWindowState] = OrderedDict()
        self._clock = clock_us or (lambda: time.time() * 1_000_000)

    def __len__(self) -> int:
        return len(self._states)

    def clear(self) -> None:
        self._states.clear()

    def now_us(self) -> float:
        return self._clock()

    def decide(
        self, items: Sequence[FallbackItem], cost: int, now_us: float, consume: bool = True
    ) -> tuple[bool, list[Evaluation]]:
        """Evaluate all items, then consume all or none, exactly like the Lua script.
        ``consume=False`` only evaluates (another part of the decision already denied)."""
        unit = cost if cost > 0 else 1
        states = [self._state(item) for item in items]
        first = [
            self._eval(s, i, now_us, unit, consume=False)
            for s, i in zip(states, items, strict=True)
        ]
        all_ok = all(e.allowed for e, i in zip(first, items, strict=True) if i.enforce)
        if cost == 0 or not all_ok or not consume:
            return all_ok, first
        final = [
            self._eval(s, i, now_us, unit, consume=True) if e.allowed else e
            for s, i, e in zip(states, items, first, strict=True)
        ]
        return all_ok, final

    def _state(self, item: FallbackItem) -> GcraState | SlidingWindowState:
        state = self._states.get(item.key)
        if state is None:
            state = GcraState() if item.algorithm is Algorithm.GCRA else SlidingWindowState()
            self._states[item.key] = state
            if len(self._states) > self._max:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(item.key)
        return state

    @staticmethod
    def _eval(
        state: GcraState | SlidingWindowState,
        item: FallbackItem,
        now: float,
        unit: int,
        consume: bool,
    ) -> Evaluation:
        if isinstance(state, GcraState):
            return state.evaluate(now, unit, item.limit, item.window_us, item.burst, consume)
        return state.evaluate(now, unit, item.limit, item.window_us, item.sub_windows, consume)
