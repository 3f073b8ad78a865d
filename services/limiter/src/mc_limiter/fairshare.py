"""Fair-share dispatcher for execution starts (MC-LIM-903): weighted concurrency slots in Redis.

Tenants acquire slots under a global cap. Free capacity is granted at once (idle share is lent);
once every slot is taken, requests queue per tenant and each freed slot goes to the backlogged
tenant with the lowest ``(running + 1) / weight``, so lent slots flow back to their owners as
they are released and a tenant's excess waits instead of starving others. Grants carry a lease
that the holder renews; an expired lease is reclaimed by the next call from any replica. All
state is in Redis and every operation is one Lua script (see ``fairshare_lua``), so replicas
agree. See docs/adr/0005-fair-share.md.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, RedisError, ResponseError

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from mc_limiter import fairshare_lua
from mc_limiter.errors import LeaseExpiredError

_T = TypeVar("_T")

__all__ = [
    "AcquireBatch",
    "CancelResult",
    "FairShareDispatcher",
    "FairShareStats",
    "Grant",
    "ReleaseBatch",
    "ReleaseResult",
    "ReleaseStatus",
    "TenantStats",
    "Ticket",
    "TicketState",
    "weighted_fair_shares",
]

MAX_ID_LENGTH = 256
MAX_BATCH = 1_000
MAX_WEIGHT = 1_000_000.0
MAX_LEASE_MS = 24 * 3600 * 1000
_SEP = "\x1f"
# The Lua side joins tenant and request id with \x1f, so control characters are refused.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class TicketState(StrEnum):
    """TicketState is where a request stands."""

    GRANTED = "granted"
    QUEUED = "queued"
    EXPIRED = "expired"


class ReleaseStatus(StrEnum):
    """ReleaseStatus is the outcome of releasing one request in a batch."""

    RELEASED = "released"
    LEASE_EXPIRED = "lease_expired"
    QUEUED = "queued"
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class Ticket:
    """Ticket is a request's state; ``queue_position`` is 0-based within its tenant's queue."""

    tenant: str
    request_id: str
    state: TicketState
    lease_expires_at_ms: int | None = None
    queue_position: int | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """Grant is a queued request that was given a slot; ``waited_ms`` is its time in queue."""

    tenant: str
    request_id: str
    lease_expires_at_ms: int
    waited_ms: int


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    """ReleaseResult says whether a held slot was freed and which queued requests got slots.

    ``released`` is False when the lease had already expired (the slot was reclaimed earlier).
    """

    released: bool
    dispatched: tuple[Grant, ...]


@dataclass(frozen=True, slots=True)
class CancelResult:
    """CancelResult gives the state the request was in and the grants its freed slot caused."""

    previous_state: TicketState
    dispatched: tuple[Grant, ...]


@dataclass(frozen=True, slots=True)
class AcquireBatch:
    """AcquireBatch holds one ticket per request, in order, and grants made along the way."""

    tickets: tuple[Ticket, ...]
    dispatched: tuple[Grant, ...]


@dataclass(frozen=True, slots=True)
class ReleaseBatch:
    """ReleaseBatch holds one status per request, in order, and the grants the slots went to."""

    statuses: tuple[ReleaseStatus, ...]
    dispatched: tuple[Grant, ...]


@dataclass(frozen=True, slots=True)
class TenantStats:
    """TenantStats is one active or configured tenant's view.

    ``fair_share`` is the weighted max-min share of the capacity given current demand
    (running + queued) of all active tenants.
    """

    weight: float
    running: int
    queued: int
    granted_total: int
    fair_share: float


@dataclass(frozen=True, slots=True)
class FairShareStats:
    """FairShareStats is one consistent snapshot of the dispatcher's state."""

    capacity: int
    running: int
    queued: int
    tenants: Mapping[str, TenantStats]
    counters: Mapping[str, int]


def weighted_fair_shares(
    capacity: float, weights: Mapping[str, float], demands: Mapping[str, float]
) -> dict[str, float]:
    """Weighted max-min (water-filling) shares: no tenant gets more than it demands.

    Tenants with zero demand get zero; what a tenant does not need is split among the others in
    proportion to their weights.
    """
    shares = {t: 0.0 for t in demands}
    active = {t for t, d in demands.items() if d > 0}
    remaining = float(capacity)
    while active and remaining > 0:
        unit = remaining / sum(weights[t] for t in active)
        satisfied = {t for t in active if demands[t] <= weights[t] * unit}
        if not satisfied:
            for t in active:
                shares[t] = weights[t] * unit
            break
        for t in satisfied:
            shares[t] = float(demands[t])
            remaining -= demands[t]
        active -= satisfied
    return shares


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


def _check_id(field: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidArgument.field(field, "must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument.field(field, f"must be at most {MAX_ID_LENGTH} characters")
    if _CONTROL_CHARS.search(value):
        raise InvalidArgument.field(field, "must not contain control characters")


def _check_lease(lease_ms: int) -> None:
    if isinstance(lease_ms, bool) or not isinstance(lease_ms, int):
        raise InvalidArgument.field("lease_ms", "must be an integer")
    if not 0 < lease_ms <= MAX_LEASE_MS:
        raise InvalidArgument.field("lease_ms", f"must be in (0, {MAX_LEASE_MS}]")


def _check_weight(field: str, weight: float) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise InvalidArgument.field(field, "must be a number")
    value = float(weight)
    if not math.isfinite(value) or not 0 < value <= MAX_WEIGHT:
        raise InvalidArgument.field(field, f"must be finite and in (0, {MAX_WEIGHT:g}]")
    return value


def _grants(flat: Sequence[Any]) -> tuple[Grant, ...]:
    return tuple(
        Grant(_text(flat[i]), _text(flat[i + 1]), int(flat[i + 2]), int(flat[i + 3]))
        for i in range(0, len(flat), 4)
    )


def _ticket(tenant: str, request_id: str, state: str, value: Any) -> Ticket:
    if state == "G":
        return Ticket(tenant, request_id, TicketState.GRANTED, lease_expires_at_ms=int(value))
    if state == "Q":
        return Ticket(tenant, request_id, TicketState.QUEUED, queue_position=int(value))
    if state == "X":
        return Ticket(tenant, request_id, TicketState.EXPIRED)
    raise NotFound(
        f"no request {request_id!r} for tenant {tenant!r}",
        reason=ErrorReason.ERROR_REASON_SLOT_REQUEST_NOT_FOUND,
    )


_STATE_NAMES = {"G": TicketState.GRANTED, "Q": TicketState.QUEUED, "X": TicketState.EXPIRED}
_RELEASE_STATUSES = {
    "R": ReleaseStatus.RELEASED,
    "X": ReleaseStatus.LEASE_EXPIRED,
    "Q": ReleaseStatus.QUEUED,
    "N": ReleaseStatus.NOT_FOUND,
}


class FairShareDispatcher:
    """FairShareDispatcher hands out ``capacity`` execution slots fairly among weighted tenants.

    Requests are identified by ``(tenant, request_id)``; acquiring the same pair again returns
    its current ticket instead of taking a second slot. Every replica must be built with the
    same ``key_prefix``, ``capacity`` and ``default_weight``; on Redis Cluster the prefix must
    contain a hash tag (``{mc:fairshare}``) because the scripts touch keys derived from it.
    ``clock`` returns epoch milliseconds and exists for simulations; by default the Redis
    server's clock is used so that replicas agree on lease expiry without trusting their own.

    ``collect_ms``: a request granted from the queue (by another call) holds its slot that long
    until its requester collects the grant (acquire, poll, wait or renew), then its full lease;
    a grant nobody collects is reclaimed (0: the whole lease). ``call_timeout_ms`` bounds every
    Redis call (a blocking wait by its own wait plus this): past it the call raises
    ``Unavailable`` instead of hanging with a hung Redis.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        key_prefix: str,
        capacity: int,
        default_weight: float = 1.0,
        default_lease_ms: int = 30_000,
        tombstone_ms: int = 300_000,
        collect_ms: int = 0,
        call_timeout_ms: int = 5_000,
        clock: Callable[[], int] | None = None,
    ) -> None:
        if not key_prefix:
            raise InvalidArgument.field("key_prefix", "must be non-empty")
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise InvalidArgument.field("capacity", "must be a positive integer")
        _check_lease(default_lease_ms)
        if isinstance(tombstone_ms, bool) or not isinstance(tombstone_ms, int) or tombstone_ms < 1:
            raise InvalidArgument.field("tombstone_ms", "must be a positive integer")
        if not 0 <= collect_ms <= MAX_LEASE_MS:
            raise InvalidArgument.field("collect_ms", f"must be in [0, {MAX_LEASE_MS}]")
        if not call_timeout_ms > 0:
            raise InvalidArgument.field("call_timeout_ms", "must be positive")
        self._collect_ms = collect_ms
        self._timeout_s = call_timeout_ms / 1000
        self._redis = redis
        self._prefix = key_prefix
        self._capacity = capacity
        self._default_weight = _check_weight("default_weight", default_weight)
        self._default_lease_ms = default_lease_ms
        self._tombstone_ms = tombstone_ms
        self._clock = clock
        self._acquire = redis.register_script(fairshare_lua.ACQUIRE)
        self._release = redis.register_script(fairshare_lua.RELEASE)
        self._cancel = redis.register_script(fairshare_lua.CANCEL)
        self._renew = redis.register_script(fairshare_lua.RENEW)
        self._poll = redis.register_script(fairshare_lua.POLL)
        self._set_weight = redis.register_script(fairshare_lua.SET_WEIGHT)
        self._stats = redis.register_script(fairshare_lua.STATS)

    @property
    def capacity(self) -> int:
        """The global number of slots."""
        return self._capacity

    async def _run(self, script: Any, *args: str | int) -> Any:
        now = "" if self._clock is None else str(int(self._clock()))
        common = (self._prefix, self._capacity, repr(self._default_weight), self._tombstone_ms)
        # KEYS[1] only routes the call to the prefix's slot on Redis Cluster.
        return await self._bounded(
            script(keys=[f"{self._prefix}:total"], args=[*common, now, *args]), self._timeout_s
        )

    async def _bounded(self, call: Awaitable[_T], timeout_s: float) -> _T:
        """``call`` within ``timeout_s``, else ``Unavailable`` (also for a lost connection)."""
        try:
            async with asyncio.timeout(timeout_s):
                return await call
        except (TimeoutError, RedisError, OSError) as exc:
            if isinstance(exc, ResponseError) and not isinstance(exc, BusyLoadingError):
                raise  # a script bug, not an outage
            raise Unavailable(
                f"fair-share store unavailable: {exc!r}",
                reason=ErrorReason.ERROR_REASON_LIMITER_STORE_UNAVAILABLE,
            ) from exc

    def _lease(self, lease_ms: int | None) -> int:
        if lease_ms is None:
            return self._default_lease_ms
        _check_lease(lease_ms)
        return lease_ms

    async def acquire(self, tenant: str, request_id: str, *, lease_ms: int | None = None) -> Ticket:
        """Take a slot now if one is free, otherwise queue; returns the request's ticket."""
        batch = await self.acquire_many([(tenant, request_id)], lease_ms=lease_ms)
        return batch.tickets[0]

    async def acquire_many(
        self, requests: Sequence[tuple[str, str]], *, lease_ms: int | None = None
    ) -> AcquireBatch:
        """Acquire for many ``(tenant, request_id)`` pairs atomically, in order."""
        lease = self._lease(lease_ms)
        flat = self._flatten(requests)
        out, dispatched = await self._run(
            self._acquire, lease, self._collect_ms, len(requests), *flat
        )
        tickets = tuple(
            _ticket(tenant, rid, _text(out[2 * i]), out[2 * i + 1])
            for i, (tenant, rid) in enumerate(requests)
        )
        return AcquireBatch(tickets, _grants(dispatched))

    async def release(self, tenant: str, request_id: str) -> ReleaseResult:
        """Free a granted slot; the slot goes to the tenant furthest below its share.

        Raises NotFound for an unknown request and FailedPrecondition for one that is
        still queued (use ``cancel``). A lease that already expired returns ``released=False``.
        """
        batch = await self.release_many([(tenant, request_id)])
        status = batch.statuses[0]
        if status is ReleaseStatus.NOT_FOUND:
            raise NotFound(
                f"no request {request_id!r} for tenant {tenant!r}",
                reason=ErrorReason.ERROR_REASON_SLOT_REQUEST_NOT_FOUND,
            )
        if status is ReleaseStatus.QUEUED:
            raise FailedPrecondition(
                f"request {request_id!r} is queued; cancel it instead",
                reason=ErrorReason.ERROR_REASON_SLOT_REQUEST_QUEUED,
            )
        return ReleaseResult(status is ReleaseStatus.RELEASED, batch.dispatched)

    async def release_many(self, requests: Sequence[tuple[str, str]]) -> ReleaseBatch:
        """Release many ``(tenant, request_id)`` pairs atomically, in order; no per-item errors."""
        flat = self._flatten(requests)
        out, dispatched = await self._run(self._release, len(requests), *flat)
        statuses = tuple(_RELEASE_STATUSES[_text(s)] for s in out)
        return ReleaseBatch(statuses, _grants(dispatched))

    async def cancel(self, tenant: str, request_id: str) -> CancelResult:
        """Withdraw a queued request, release a granted one, or forget an expired one."""
        self._check_pair(tenant, request_id)
        state, dispatched = await self._run(self._cancel, tenant, request_id)
        previous = _STATE_NAMES.get(_text(state))
        if previous is None:
            raise NotFound(
                f"no request {request_id!r} for tenant {tenant!r}",
                reason=ErrorReason.ERROR_REASON_SLOT_REQUEST_NOT_FOUND,
            )
        return CancelResult(previous, _grants(dispatched))

    async def renew(self, tenant: str, request_id: str, *, lease_ms: int | None = None) -> Ticket:
        """Extend a granted lease to ``lease_ms`` from now (the holder's heartbeat).

        Raises LeaseExpiredError if the slot was already reclaimed.
        """
        self._check_pair(tenant, request_id)
        lease = self._lease(lease_ms)
        state, value, _ = await self._run(self._renew, lease, tenant, request_id)
        ticket = _ticket(tenant, request_id, _text(state), value)
        if ticket.state is TicketState.EXPIRED:
            raise LeaseExpiredError(f"lease of {request_id!r} for tenant {tenant!r} expired")
        if ticket.state is TicketState.QUEUED:
            raise FailedPrecondition(
                f"request {request_id!r} is queued, not granted",
                reason=ErrorReason.ERROR_REASON_SLOT_REQUEST_QUEUED,
            )
        return ticket

    async def poll(self, tenant: str, request_id: str) -> Ticket:
        """Current ticket of a request (also reclaims expired leases and dispatches)."""
        return await self._poll_ticket(tenant, request_id, watch=False)

    async def wait(
        self, tenant: str, request_id: str, *, timeout_s: float, recheck_s: float = 1.0
    ) -> Ticket:
        """Block until a queued request is granted (or expired), or ``timeout_s`` passes.

        Works across replicas: the waiter registers on its request, and whichever replica
        dispatches it pushes to a per-request list that this call BLPOPs. It re-polls every
        ``recheck_s`` so that expired leases are reclaimed even if no other call arrives. Each
        waiter holds one pooled connection while blocked, so the client's ``socket_timeout`` (if
        any) must exceed ``recheck_s``. Returns the last ticket seen, still QUEUED on timeout.
        """
        if not timeout_s >= 0:
            raise InvalidArgument.field("timeout_s", "must be >= 0")
        if not recheck_s > 0:
            raise InvalidArgument.field("recheck_s", "must be > 0")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        note_key = f"{self._prefix}:n:{tenant}{_SEP}{request_id}"
        while True:
            ticket = await self._poll_ticket(tenant, request_id, watch=True)
            remaining = deadline - loop.time()
            if ticket.state is not TicketState.QUEUED or remaining <= 0:
                return ticket
            block_s = min(remaining, recheck_s)
            await self._bounded(
                self._redis.blpop([note_key], timeout=block_s), block_s + self._timeout_s
            )

    async def set_weight(self, tenant: str, weight: float) -> None:
        """Set a tenant's weight; the next dispatch decision already uses it for queued work."""
        _check_id("tenant", tenant)
        value = _check_weight("weight", weight)
        await self._run(self._set_weight, tenant, repr(value))

    async def stats(self) -> FairShareStats:
        """A consistent snapshot: totals, per-tenant running/queued/weight/share, counters."""
        total, run, weights, queued, granted, counters, _ = await self._run(self._stats)
        running = {t: int(v) for t, v in _pairs(run).items()}
        weight_of = {t: float(v) for t, v in _pairs(weights).items()}
        waiting = {t: int(v) for t, v in _pairs(queued).items()}
        granted_total = {t: int(v) for t, v in _pairs(granted).items()}
        names = set(running) | set(weight_of) | set(waiting)
        w = {t: weight_of.get(t, self._default_weight) for t in names}
        demand = {t: running.get(t, 0) + waiting.get(t, 0) for t in names}
        shares = weighted_fair_shares(self._capacity, w, demand)
        tenants = {
            t: TenantStats(
                weight=w[t],
                running=running.get(t, 0),
                queued=waiting.get(t, 0),
                granted_total=granted_total.get(t, 0),
                fair_share=shares[t],
            )
            for t in sorted(names)
        }
        return FairShareStats(
            capacity=self._capacity,
            running=int(total),
            queued=sum(waiting.values()),
            tenants=tenants,
            counters={k: int(v) for k, v in _pairs(counters).items()},
        )

    async def _poll_ticket(self, tenant: str, request_id: str, *, watch: bool) -> Ticket:
        self._check_pair(tenant, request_id)
        state, value, _ = await self._run(self._poll, "1" if watch else "0", tenant, request_id)
        return _ticket(tenant, request_id, _text(state), value)

    @staticmethod
    def _check_pair(tenant: str, request_id: str) -> None:
        _check_id("tenant", tenant)
        _check_id("request_id", request_id)

    def _flatten(self, requests: Sequence[tuple[str, str]]) -> list[str]:
        if not requests:
            raise InvalidArgument.field("requests", "must not be empty")
        if len(requests) > MAX_BATCH:
            raise InvalidArgument.field("requests", f"at most {MAX_BATCH} per call")
        flat: list[str] = []
        for tenant, request_id in requests:
            self._check_pair(tenant, request_id)
            flat += (tenant, request_id)
        return flat
