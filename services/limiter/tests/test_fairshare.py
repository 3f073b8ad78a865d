"""Tests for the fair-share dispatcher (MC-LIM-903) against a real Redis.

The load scenarios run the real Lua dispatcher in Redis but drive it from a virtual clock: a
step driver advances simulated time in fixed ticks, releases the slots whose simulated hold time
has passed, submits new work, and reads back which requests got slots. Nothing sleeps on the wall
clock, so the runs are deterministic (seeded) and take a few seconds. Time figures (dispatch
gaps, borrowing, convergence) are therefore in simulated milliseconds with the tick as the
resolution; they measure the scheduling policy, not Redis latency.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis

from mc_common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from mc_limiter.errors import LeaseExpiredError
from mc_limiter.fairshare import (
    FairShareDispatcher,
    Grant,
    ReleaseStatus,
    TicketState,
    weighted_fair_shares,
)

# `redis_client`, `redis_prefix` and `redis_server_url` come from the shared plugin
# (mc_common.testing.plugin): a real Redis, keys under the prefix removed after each test.


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return f"{redis_prefix}fairshare"


class VirtualClock:
    """Simulated epoch milliseconds, advanced by the test."""

    def __init__(self, start_ms: int = 1_000_000) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms


def jain_index(values: Iterable[float]) -> float:
    xs = list(values)
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


# --- the virtual-time load driver ------------------------------------------------------------


@dataclass
class Load:
    """A closed-loop tenant: keeps ``outstanding`` requests (running + queued) while active."""

    tenant: str
    outstanding: int
    active_from_ms: int
    active_until_ms: int


@dataclass
class Simulation:
    """Drives a dispatcher in ticks of simulated time and records what a referee needs.

    Each tick: (1) release every held slot whose hold ended, which dispatches queued work;
    (2) top up every active tenant to its outstanding demand (acquire, granted or queued);
    (3) record per-tenant running counts. Holds are drawn from ``hold_ms`` with a seeded RNG.
    """

    dispatcher: FairShareDispatcher
    clock: VirtualClock
    loads: list[Load]
    hold_ms: tuple[int, int] = (500, 1500)
    tick_ms: int = 10
    seed: int = 903
    t_ms: int = 0
    rng: random.Random = field(init=False)
    holding: dict[str, dict[str, int]] = field(init=False)  # tenant -> rid -> release at
    ends: list[tuple[int, str, str]] = field(default_factory=list)  # heap of (release at, t, rid)
    queued: dict[str, set[str]] = field(init=False)
    dispatch_count: dict[str, int] = field(init=False)
    backlog_mark: dict[str, int | None] = field(init=False)
    max_gap_ms: dict[str, int] = field(init=False)
    weights: dict[str, float] = field(default_factory=dict)
    max_request_wait_ms: int = 0
    max_running_total: int = 0
    next_id: int = 0

    def __post_init__(self) -> None:
        names = [load.tenant for load in self.loads]
        self.rng = random.Random(self.seed)
        self.holding = {t: {} for t in names}
        self.queued = {t: set() for t in names}
        self.dispatch_count = dict.fromkeys(names, 0)
        self.backlog_mark = dict.fromkeys(names)
        self.max_gap_ms = dict.fromkeys(names, 0)

    def running(self, tenant: str) -> int:
        return len(self.holding[tenant])

    def backlogged(self, tenant: str) -> bool:
        return bool(self.queued[tenant])

    def _granted(self, tenant: str, rid: str) -> None:
        self.queued[tenant].discard(rid)
        end = self.t_ms + self.rng.randint(*self.hold_ms)
        self.holding[tenant][rid] = end
        heapq.heappush(self.ends, (end, tenant, rid))

    def _dispatched(self, grants: Iterable[Grant]) -> None:
        for g in grants:
            self._granted(g.tenant, g.request_id)
            self.dispatch_count[g.tenant] += 1
            self.max_request_wait_ms = max(self.max_request_wait_ms, g.waited_ms)
            mark = self.backlog_mark[g.tenant]
            if mark is not None:
                self.max_gap_ms[g.tenant] = max(self.max_gap_ms[g.tenant], self.t_ms - mark)
                self.backlog_mark[g.tenant] = None  # re-armed at the end of the tick if still owed

    async def step(self) -> None:
        self.clock.now_ms += self.tick_ms
        self.t_ms += self.tick_ms
        done: list[tuple[str, str]] = []
        while self.ends and self.ends[0][0] <= self.t_ms:
            _, t, rid = heapq.heappop(self.ends)
            del self.holding[t][rid]
            done.append((t, rid))
        for i in range(0, len(done), 1000):
            released = await self.dispatcher.release_many(done[i : i + 1000])
            assert set(released.statuses) <= {ReleaseStatus.RELEASED}
            self._dispatched(released.dispatched)
        per_tenant: list[list[tuple[str, str]]] = []
        for load in self.loads:
            if load.active_from_ms <= self.t_ms < load.active_until_ms:
                t = load.tenant
                missing = load.outstanding - self.running(t) - len(self.queued[t])
                per_tenant.append([(t, f"r{self.next_id + i}") for i in range(max(0, missing))])
                self.next_id += max(0, missing)
        # Requests of one tick arrive interleaved across tenants, as from independent callers.
        wanted = [r for wave in itertools.zip_longest(*per_tenant) for r in wave if r is not None]
        for i in range(0, len(wanted), 1000):
            chunk = wanted[i : i + 1000]
            acquired = await self.dispatcher.acquire_many(chunk)
            self._dispatched(acquired.dispatched)
            for ticket in acquired.tickets:
                if ticket.state is TicketState.GRANTED:
                    self._granted(ticket.tenant, ticket.request_id)
                else:
                    assert ticket.state is TicketState.QUEUED
                    self.queued[ticket.tenant].add(ticket.request_id)
        total = sum(len(h) for h in self.holding.values())
        self.max_running_total = max(self.max_running_total, total)
        self._arm_gap_marks()

    def fair_shares(self) -> dict[str, float]:
        demand = {t: self.running(t) + len(self.queued[t]) for t in self.holding}
        weights = {t: self.weights.get(t, 1.0) for t in self.holding}
        shares: dict[str, float] = weighted_fair_shares(self.dispatcher.capacity, weights, demand)
        return shares

    def _arm_gap_marks(self) -> None:
        # A tenant is owed a slot while it has queued work and runs below its max-min fair share
        # (weighted water-filling over current demand). The gap clock runs from the first tick
        # end at which it is owed until it gets a slot.
        shares = self.fair_shares()
        for t in self.holding:
            owed = bool(self.queued[t]) and self.running(t) < math.floor(shares[t])
            if not owed:
                self.backlog_mark[t] = None
            elif self.backlog_mark[t] is None:
                self.backlog_mark[t] = self.t_ms

    def final_gaps(self) -> dict[str, int]:
        """Longest time each tenant was owed a slot (see ``_arm_gap_marks``) without getting
        one, counting a wait still open at the end of the run."""
        gaps = dict(self.max_gap_ms)
        for t, mark in self.backlog_mark.items():
            if mark is not None:
                gaps[t] = max(gaps[t], self.t_ms - mark)
        return gaps


# --- load scenarios --------------------------------------------------------------------------

CAPACITY = 5_000
WELL_BEHAVED = [f"tenant-{i:02d}" for i in range(20)]
HOSTILE = "hostile"


async def test_hostile_tenant_cannot_starve_well_behaved_tenants(
    redis_client: Redis, prefix: str
) -> None:
    """Global cap 5,000; 21 equal-weight tenants, so a fair share is 5000/21 = 238.1 slots.

    The hostile tenant keeps 10x its share outstanding (2,380 requests) for the whole run; the 20
    well-behaved tenants each keep 1.5x their share (357) outstanding from t=1 s to t=6 s and
    then stop submitting. Holds are uniform 0.5-1.5 s (simulated), ticks are 10 ms, and each
    tick's new requests arrive interleaved across tenants.

    Measured (all simulated time, 10 ms resolution):
    - borrowing: alone (t<1 s) the hostile tenant holds all 2,380 of its requests (10x share);
    - give-back: while all 21 contend and others are backlogged, a slot is never given to the
      hostile tenant above ceil(5000/21) = 239, and from one maximum hold (1.5 s) after the
      others arrive it holds at most 239;
    - fairness: Jain's index of the well-behaved tenants' slot-time over t in [2.5 s, 6 s);
    - no starvation: "dispatch gap" = how long a tenant is owed a slot (it has queued work and
      runs below its weighted max-min share of current demand, checked at tick ends) without
      getting one; the longest over all tenants and the whole run must be <= 1 s. (A tenant
      above its share, like the hostile one while it gives back, is not owed a slot.);
    - re-borrowing: after the others go idle the hostile tenant again holds all 2,380;
    - the cap: client-held slots never exceed 5,000 and match the server's count.
    """
    clock = VirtualClock()
    dispatcher = FairShareDispatcher(
        redis_client, key_prefix=prefix, capacity=CAPACITY, default_lease_ms=60_000, clock=clock
    )
    share = CAPACITY / (len(WELL_BEHAVED) + 1)
    share_ceil = math.ceil(share)
    t_join, t_leave, t_end = 1_000, 6_000, 9_000
    loads = [Load(HOSTILE, 10 * round(share), 0, t_end + 1)] + [
        Load(t, round(1.5 * share), t_join, t_leave) for t in WELL_BEHAVED
    ]
    sim = Simulation(dispatcher, clock, loads)
    window = (t_join + 1_500, t_leave)
    slot_ms = dict.fromkeys(WELL_BEHAVED, 0)
    hostile_slot_ms = 0
    hostile_alone_peak = 0
    hostile_back_at: int | None = None

    while sim.t_ms < t_end:
        dispatched_before = sim.dispatch_count[HOSTILE]
        await sim.step()
        hostile_now = sim.running(HOSTILE)
        # Until t_leave all 21 tenants contend, so the hostile share is 5000/21; after it the
        # others wind down and the hostile tenant's max-min share grows as they go idle.
        others_backlogged = sim.t_ms < t_leave and any(sim.backlogged(t) for t in WELL_BEHAVED)
        assert sim.max_running_total <= CAPACITY
        if sim.t_ms < t_join:
            hostile_alone_peak = max(hostile_alone_peak, hostile_now)
        if others_backlogged and sim.dispatch_count[HOSTILE] > dispatched_before:
            # Releases come first in a tick, so the hostile tenant can drop below its share
            # and be refilled within one tick; it may never be refilled above its share.
            assert hostile_now <= share_ceil, f"t={sim.t_ms}: hostile refilled to {hostile_now}"
        if hostile_back_at is None and sim.t_ms > t_join and hostile_now <= share_ceil:
            hostile_back_at = sim.t_ms
        if others_backlogged and sim.t_ms >= t_join + 1_500:
            assert hostile_now <= share_ceil, f"t={sim.t_ms}: hostile holds {hostile_now}"
        if window[0] <= sim.t_ms < window[1]:
            for t in WELL_BEHAVED:
                slot_ms[t] += sim.running(t) * sim.tick_ms
            hostile_slot_ms += hostile_now * sim.tick_ms
        if sim.t_ms % 1_000 == 0:
            stats = await dispatcher.stats()
            assert stats.running == sum(sim.running(t) for t in sim.holding)
            assert stats.queued == sum(len(q) for q in sim.queued.values())

    fairness = jain_index(slot_ms.values())
    gaps = sim.final_gaps()
    hostile_fraction = hostile_slot_ms / (CAPACITY * (window[1] - window[0]))
    print(
        f"\nfair share {share:.1f}; hostile alone {hostile_alone_peak}; back at share "
        f"{hostile_back_at} ms; Jain {fairness:.6f}; "
        f"hostile slot-time fraction {hostile_fraction:.4f} (fair {1 / 21:.4f}); "
        f"max dispatch gap {max(gaps.values())} ms; max request wait {sim.max_request_wait_ms} ms"
    )
    assert hostile_alone_peak == 10 * round(share)
    assert fairness >= 0.95
    assert hostile_slot_ms <= share_ceil * (window[1] - window[0])
    assert max(gaps.values()) <= 1_000, gaps
    assert sim.running(HOSTILE) == 10 * round(share)
    assert not any(sim.queued.values())
    assert all(sim.running(t) == 0 for t in WELL_BEHAVED)


async def test_weight_change_applies_to_already_queued_work(
    redis_client: Redis, prefix: str
) -> None:
    """Four equal tenants queue 800 requests each up front under a cap of 200, then submit
    nothing more. For 3 s (simulated) each is dispatched about equally; then tenant X's weight
    is doubled and, measured from 1.5 s later (beyond the 1.2 s maximum hold) over 3 s, X's count
    relative to the mean of the others roughly doubles (its steady running count is 2/5 of the
    cap vs 1/5 each for the others), all from requests that were queued before the change.
    """
    clock = VirtualClock()
    dispatcher = FairShareDispatcher(
        redis_client, key_prefix=prefix, capacity=200, default_lease_ms=60_000, clock=clock
    )
    names = ["a", "b", "c", "x"]
    sim = Simulation(dispatcher, clock, [Load(t, 800, 0, 15) for t in names], hold_ms=(800, 1200))
    await sim.step()  # t = 10 ms, the only tick with submissions: 50 granted each, rest queued
    assert all(sim.running(t) == 50 for t in names)
    assert sum(len(q) for q in sim.queued.values()) == 4 * 800 - 200

    async def dispatches_during(ms: int) -> dict[str, int]:
        before = dict(sim.dispatch_count)
        for _ in range(ms // sim.tick_ms):
            await sim.step()
        return {t: sim.dispatch_count[t] - before[t] for t in names}

    def ratio(counts: dict[str, int]) -> float:
        return counts["x"] / (sum(counts[t] for t in "abc") / 3)

    equal = await dispatches_during(3_000)
    await dispatcher.set_weight("x", 2.0)
    sim.weights["x"] = 2.0
    await dispatches_during(1_500)
    doubled = await dispatches_during(3_000)
    stats = await dispatcher.stats()
    print(f"\nX/others dispatch ratio: before {ratio(equal):.3f}, after {ratio(doubled):.3f}")
    assert 0.85 <= ratio(equal) <= 1.15
    assert 1.7 <= ratio(doubled) <= 2.3
    assert stats.tenants["x"].weight == 2.0
    assert stats.tenants["x"].running == 80
    assert all(stats.tenants[t].running == 40 for t in "abc")
    assert all(stats.tenants[t].queued > 0 for t in names), "backlog drained: nothing measured"


# --- replicas, leases, API -------------------------------------------------------------------


async def test_two_replicas_never_exceed_the_cap(
    redis_client: Redis, redis_server_url: str, prefix: str
) -> None:
    """Two dispatchers on two Redis clients (as two replicas) serve 80 concurrent workers
    over 6 tenants with a cap of 25, mixing acquire/wait/release/cancel and weight changes, on
    the Redis server clock. Slots held by workers (counted between a grant and the release call)
    never exceed the cap, the server's count never does either, no request is granted twice,
    and everything drains to zero.
    """
    cap = 25
    second_client = Redis.from_url(redis_server_url)
    replicas = [
        FairShareDispatcher(client, key_prefix=prefix, capacity=cap)
        for client in (redis_client, second_client)
    ]
    tenants = [f"t{i}" for i in range(6)]
    held: set[str] = set()
    granted: set[str] = set()
    granted_then_cancelled: set[str] = set()
    peak = 0
    server_peak = 0
    stop = asyncio.Event()

    async def worker(n: int) -> None:
        nonlocal peak
        rng = random.Random(n)
        for i in range(12):
            tenant, rid = rng.choice(tenants), f"w{n}-{i}"
            replica = replicas[rng.randrange(2)]
            ticket = await replica.acquire(tenant, rid)
            if ticket.state is TicketState.QUEUED:
                if rng.random() < 0.1:
                    cancelled = await replicas[rng.randrange(2)].cancel(tenant, rid)
                    if cancelled.previous_state is TicketState.GRANTED:
                        granted_then_cancelled.add(rid)  # dispatched before the cancel landed
                    else:
                        assert cancelled.previous_state is TicketState.QUEUED
                    continue
                ticket = await replica.wait(tenant, rid, timeout_s=20)
            assert ticket.state is TicketState.GRANTED
            assert rid not in granted
            granted.add(rid)
            held.add(rid)
            peak = max(peak, len(held))
            assert len(held) <= cap
            await asyncio.sleep(rng.random() * 0.003)
            held.discard(rid)
            result = await replicas[rng.randrange(2)].release(tenant, rid)
            assert result.released

    async def monitor() -> None:
        nonlocal server_peak
        rng = random.Random(0)
        while not stop.is_set():
            stats = await replicas[1].stats()
            assert stats.running <= cap
            server_peak = max(server_peak, stats.running)
            await replicas[0].set_weight(rng.choice(tenants), rng.choice([0.5, 1.0, 3.0]))
            await asyncio.sleep(0.002)

    try:
        watcher = asyncio.create_task(monitor())
        await asyncio.gather(*(worker(n) for n in range(80)))
        stop.set()
        await watcher
        final = await replicas[0].stats()
    finally:
        await second_client.aclose()
    assert peak <= cap
    assert server_peak == cap  # the runs were contended: slots were full and work queued
    assert final.counters["queued"] > 0
    assert final.running == 0
    assert final.queued == 0
    server_grants = final.counters["granted_immediately"] + final.counters["granted_from_queue"]
    assert server_grants == len(granted) + len(granted_then_cancelled)


async def test_waiter_is_woken_by_a_release_on_another_replica(
    redis_client: Redis, redis_server_url: str, prefix: str
) -> None:
    """A queued caller blocked in ``wait`` on one replica is handed the slot released through
    the other replica, via its notification list, well before its 5 s re-check."""
    second_client = Redis.from_url(redis_server_url)
    try:
        one = FairShareDispatcher(redis_client, key_prefix=prefix, capacity=1)
        two = FairShareDispatcher(second_client, key_prefix=prefix, capacity=1)
        assert (await one.acquire("a", "1")).state is TicketState.GRANTED
        assert (await two.acquire("b", "1")).state is TicketState.QUEUED
        # Re-checks an hour apart: only the notification can wake the waiter before the
        # deadline below (a deadline against a hang, not a performance bound).
        waiter = asyncio.create_task(two.wait("b", "1", timeout_s=3600, recheck_s=3600))
        released = await one.release("a", "1")
        async with asyncio.timeout(60):
            ticket = await waiter
    finally:
        await second_client.aclose()
    assert [g.request_id for g in released.dispatched] == ["1"]
    assert ticket.state is TicketState.GRANTED


async def test_expired_leases_are_reclaimed_and_redispatched(
    redis_client: Redis, prefix: str
) -> None:
    """A holder that stops renewing loses its slot when its lease passes; the next call on any
    replica reclaims it and dispatches queued work. Renewal keeps a lease alive."""
    clock = VirtualClock()
    d = FairShareDispatcher(
        redis_client, key_prefix=prefix, capacity=3, default_lease_ms=1_000, clock=clock
    )
    start = clock.now_ms
    for tenant, rid in [("a", "1"), ("a", "2"), ("b", "1")]:
        ticket = await d.acquire(tenant, rid)
        assert ticket.state is TicketState.GRANTED
        assert ticket.lease_expires_at_ms == start + 1_000
    queued = await d.acquire("b", "2", lease_ms=5_000)
    assert queued.state is TicketState.QUEUED
    clock.now_ms += 800
    assert (await d.renew("a", "1")).lease_expires_at_ms == clock.now_ms + 1_000
    clock.now_ms = start + 1_000  # a/2 and b/1 expire now; a/1 was renewed
    polled = await d.poll("b", "2")
    assert polled.state is TicketState.GRANTED
    assert polled.lease_expires_at_ms == clock.now_ms + 5_000
    assert (await d.poll("a", "2")).state is TicketState.EXPIRED
    assert (await d.poll("a", "1")).state is TicketState.GRANTED
    with pytest.raises(LeaseExpiredError) as expired:
        await d.renew("b", "1")
    assert expired.value.grpc_code is grpc.StatusCode.FAILED_PRECONDITION
    late = await d.release("a", "2")
    assert not late.released
    stats = await d.stats()
    assert stats.running == 2
    assert stats.counters["expired"] == 2
    assert (await d.acquire("c", "1")).state is TicketState.GRANTED  # the third slot is free
    assert (await d.cancel("a", "2")).previous_state is TicketState.EXPIRED
    with pytest.raises(NotFound):
        await d.poll("a", "2")


async def test_grants_nobody_collects_are_reclaimed(redis_client: Redis, prefix: str) -> None:
    """A request granted from the queue whose requester went away used to hold its slot for a
    whole lease; it now holds it only until the collection deadline."""
    clock = VirtualClock()
    d = FairShareDispatcher(
        redis_client,
        key_prefix=prefix,
        capacity=1,
        default_lease_ms=30_000,
        collect_ms=1_000,
        clock=clock,
    )
    await d.acquire("a", "1")
    assert (await d.acquire("b", "gone")).state is TicketState.QUEUED
    assert (await d.acquire("b", "here")).state is TicketState.QUEUED
    released = await d.release("a", "1")
    [grant] = released.dispatched
    assert (grant.request_id, grant.lease_expires_at_ms) == ("gone", clock.now_ms + 1_000)
    clock.now_ms += 1_001  # nobody collected it: reclaimed, the next one is granted
    assert (await d.poll("b", "gone")).state is TicketState.EXPIRED
    here = await d.poll("b", "here")  # collected at once: the whole lease from now
    assert here.state is TicketState.GRANTED
    assert here.lease_expires_at_ms == clock.now_ms + 30_000
    clock.now_ms += 5_000
    assert (await d.poll("b", "here")).lease_expires_at_ms == clock.now_ms + 25_000
    stats = await d.stats()
    assert (stats.running, stats.queued) == (1, 0)
    assert stats.counters["expired"] == 1


async def test_every_call_is_bounded_when_redis_hangs(redis_servers: Any) -> None:
    """A hung Redis used to hang AcquireSlot (and every other call) until it recovered."""
    server = redis_servers()
    client = Redis.from_url(server.url)
    d = FairShareDispatcher(client, key_prefix="fs", capacity=1, call_timeout_ms=200)
    try:
        await d.acquire("a", "1")
        await d.acquire("a", "2")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        try:
            async with asyncio.timeout(30):  # a safety net for the test run, not a measurement
                for call in (
                    d.acquire("a", "3"),
                    d.poll("a", "1"),
                    d.release("a", "1"),
                    d.stats(),
                    d.wait("a", "2", timeout_s=0.5, recheck_s=0.2),
                ):
                    with pytest.raises(Unavailable):
                        await call
        finally:
            server.proc.send_signal(signal.SIGCONT)
    finally:
        await client.aclose()


async def test_acquire_is_idempotent_and_cancel_withdraws_queued_work(
    redis_client: Redis, prefix: str
) -> None:
    d = FairShareDispatcher(redis_client, key_prefix=prefix, capacity=1)
    first = await d.acquire("a", "1")
    assert (await d.acquire("a", "1")) == first
    assert (await d.acquire("b", "1")).state is TicketState.QUEUED
    assert (await d.acquire("b", "2")).queue_position == 1
    assert (await d.cancel("b", "1")).previous_state is TicketState.QUEUED
    assert (await d.poll("b", "2")).queue_position == 0
    with pytest.raises(FailedPrecondition) as queued:
        await d.release("b", "2")
    assert queued.value.grpc_code is grpc.StatusCode.FAILED_PRECONDITION
    released = await d.release("a", "1")
    assert [(g.tenant, g.request_id) for g in released.dispatched] == [("b", "2")]
    stats = await d.stats()
    assert (stats.running, stats.queued) == (1, 0)


async def test_freed_slots_go_to_the_tenant_furthest_below_its_weighted_share(
    redis_client: Redis, prefix: str
) -> None:
    """With a (weight 3) and b (weight 1) both backlogged, freed slots split about 3:1."""
    clock = VirtualClock()
    d = FairShareDispatcher(redis_client, key_prefix=prefix, capacity=8, clock=clock)
    await d.set_weight("a", 3)
    batch = await d.acquire_many([("z", f"{i}") for i in range(8)])
    assert all(t.state is TicketState.GRANTED for t in batch.tickets)
    await d.acquire_many([(t, f"{t}{i}") for i in range(10) for t in "ab"])
    released = await d.release_many([("z", f"{i}") for i in range(8)])
    owners = [g.tenant for g in released.dispatched]
    assert owners.count("a") == 6
    assert owners.count("b") == 2
    stats = await d.stats()
    assert stats.tenants["a"].fair_share == 6.0
    assert stats.tenants["b"].fair_share == 2.0


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda d: d.acquire("", "1"), "tenant"),
        (lambda d: d.acquire("a", ""), "request_id"),
        (lambda d: d.acquire("a\x1fb", "1"), "tenant"),
        (lambda d: d.acquire("a", "1", lease_ms=0), "lease_ms"),
        (lambda d: d.set_weight("a", 0), "weight"),
        (lambda d: d.set_weight("a", -1.5), "weight"),
        (lambda d: d.set_weight("a", float("nan")), "weight"),
        (lambda d: d.set_weight("a", float("inf")), "weight"),
        (lambda d: d.acquire_many([]), "requests"),
        (lambda d: d.wait("a", "1", timeout_s=-1), "timeout_s"),
    ],
)
async def test_bad_input_is_rejected_and_changes_nothing(
    redis_client: Redis, redis_prefix: str, prefix: str, call: object, field: str
) -> None:
    d = FairShareDispatcher(redis_client, key_prefix=prefix, capacity=2)
    with pytest.raises(InvalidArgument) as error:
        await call(d)  # type: ignore[operator]
    assert error.value.grpc_code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.value.violations] == [field]
    assert [k async for k in redis_client.scan_iter(match=redis_prefix + "*")] == []


async def test_unknown_requests_are_not_found(redis_client: Redis, prefix: str) -> None:
    d = FairShareDispatcher(redis_client, key_prefix=prefix, capacity=2)
    for call in (d.poll, d.release, d.cancel, d.renew):
        with pytest.raises(NotFound) as error:
            await call("a", "missing")
        assert error.value.grpc_code is grpc.StatusCode.NOT_FOUND
        assert error.value.reason == "ERROR_REASON_SLOT_REQUEST_NOT_FOUND"
    assert (await d.release_many([("a", "missing")])).statuses == (ReleaseStatus.NOT_FOUND,)
    with pytest.raises(InvalidArgument):
        FairShareDispatcher(redis_client, key_prefix=prefix, capacity=0)


def test_weighted_fair_shares_water_fills() -> None:
    shares = weighted_fair_shares(
        100, {"a": 1.0, "b": 1.0, "c": 2.0, "d": 1.0}, {"a": 10, "b": 500, "c": 500, "d": 0}
    )
    assert shares == {"a": 10.0, "b": 30.0, "c": 60.0, "d": 0.0}
