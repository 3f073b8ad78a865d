"""The reference algorithms (also the fallback engine), the deny aggregator, and script
reloading after a shard loses its scripts."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mc_limiter.algorithms import GcraState, SlidingWindowState
from mc_limiter.decisions import CheckRequest
from mc_limiter.denials import DenyAggregator, DenyRecord
from mc_limiter.limiter import Limiter

MakeLimiter = Callable[..., Awaitable[Limiter]]
SECOND_US = 1_000_000.0


def test_gcra_burst_then_steady_rate() -> None:
    state = GcraState()
    t = 1000 * SECOND_US
    admitted = [state.evaluate(t, 1, 10, SECOND_US, 4, True).allowed for _ in range(6)]
    assert admitted == [True] * 4 + [False] * 2
    denied = state.evaluate(t, 1, 10, SECOND_US, 4, True)
    assert math.isclose(denied.retry_us, 100_000, rel_tol=1e-9)
    assert state.evaluate(t + denied.retry_us, 1, 10, SECOND_US, 4, True).allowed
    assert not state.evaluate(t + denied.retry_us, 1, 10, SECOND_US, 4, False).allowed


def test_sliding_window_weights_the_previous_window() -> None:
    state = SlidingWindowState()
    start = 1000 * SECOND_US
    for _ in range(10):
        assert state.evaluate(start, 1, 10, SECOND_US, 1, True).allowed
    # Half-way through the next window, half of the previous one still counts.
    half = state.evaluate(start + 1.5 * SECOND_US, 1, 10, SECOND_US, 1, False)
    assert half.allowed and half.remaining == 5
    denied = state.evaluate(start + 1.0 * SECOND_US, 6, 10, SECOND_US, 1, False)
    assert not denied.allowed
    assert math.isclose(denied.retry_us, 0.6 * SECOND_US, rel_tol=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40_000), st.integers(1, 3)), min_size=1, max_size=120),
    st.integers(1, 4),
)
def test_sliding_window_bounds(steps: Sequence[tuple[int, int]], sub_windows: int) -> None:
    """Per aligned window never more than the limit; waiting retry_us always admits."""
    limit, window = 10, 100_000.0
    state = SlidingWindowState()
    now = 5 * window
    per_window: dict[int, int] = defaultdict(int)
    for gap, cost in steps:
        now += gap
        result = state.evaluate(now, cost, limit, window, sub_windows, True)
        if result.allowed:
            per_window[math.floor(now / window)] += cost
        else:
            probe = SlidingWindowState(dict(state.counts))
            later = probe.evaluate(
                now + result.retry_us + 1e-3, cost, limit, window, sub_windows, False
            )
            assert later.allowed
    assert max(per_window.values(), default=0) <= limit


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30_000), st.integers(1, 3)), min_size=1, max_size=120))
def test_gcra_never_exceeds_burst_plus_rate(steps: Sequence[tuple[int, int]]) -> None:
    limit, window, burst = 10, 100_000.0, 4
    emission = window / limit
    state = GcraState()
    now = 0.0
    admitted: list[tuple[float, int]] = []
    for gap, cost in steps:
        now += gap
        if state.evaluate(now, cost, limit, window, burst, True).allowed:
            admitted.append((now, cost))
    for i in range(len(admitted)):
        units = 0
        for j in range(i, len(admitted)):
            units += admitted[j][1]
            assert units <= burst + (admitted[j][0] - admitted[i][0]) / emission + 1e-6


class FlakySink:
    def __init__(self) -> None:
        self.calls = 0
        self.records: list[DenyRecord] = []

    async def publish(self, records: Sequence[DenyRecord]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("kafka down")
        self.records.extend(records)


async def test_deny_aggregator_groups_and_retries_after_sink_failure() -> None:
    sink = FlakySink()
    aggregator = DenyAggregator(sink)
    for _ in range(3):
        aggregator.record("acme", "r", "l", "k", "enforce", 100)
    aggregator.record("acme", "r", "l", "k", "enforce", 101)
    assert await aggregator.flush() == 0
    aggregator.record("acme", "r", "l", "k", "enforce", 101)
    assert await aggregator.flush() == 2
    assert sorted((r.second, r.count) for r in sink.records) == [(100, 3), (101, 2)]


async def test_scripts_reload_after_flush(
    make_limiter: MakeLimiter, redis_servers: Callable[[], Any], shared_redis: Any
) -> None:
    server = redis_servers()
    limiter = await make_limiter([server.url], config=shared_redis)
    await limiter.put_rule(
        {"id": "r", "scope": "key", "limits": [{"name": "l", "limit": 5, "window_ms": 60_000}]},
        actor="t",
    )
    assert (await limiter.check("acme", "", "k")).allowed
    client = limiter.router.shards[0].client
    await client.script_flush()
    assert (await limiter.check("acme", "", "k")).results[0].used == 2
    await client.script_flush()
    batch = await limiter.check_batch([CheckRequest("acme", "", "k")] * 4)
    assert [d.allowed for d in batch] == [True, True, True, False]
    assert not any(d.degraded for d in batch)
