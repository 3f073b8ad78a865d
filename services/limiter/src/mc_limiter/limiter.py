"""The limiter facade: checks, usage reads and operator calls, over sharded Redis.

A check resolves the rules matching ``(tenant, token, key)`` from an in-memory config snapshot
(refreshed from Redis when its version changes), applies the tenant's throttle factor, the
global shadow switch and each rule's mode / ``enforce_percent``, and then evaluates every
limit in one Lua call on the shard owning the tenant's hash tag: all limits consumed or none.

Cross-tenant ``global``-scope pools live under their own tag, possibly on another shard. A
decision touching both is evaluated shard by shard (tenant tag first); if a later shard
denies, what the earlier ones consumed is refunded, so the outcome is still all-or-none
(concurrent checks may briefly see the refunded units as used: this errs toward denying).

Degraded mode: a connection error or timeout on a shard trips its breaker; the failing check
and every following one for that shard are answered from in-process buckets at this
replica's share of the limit (``fallback.py``), or per the rule's ``failure_mode`` when the
rule opts out of local fallback. A background probe closes the breaker when the shard answers.
A check that timed out on a hung shard may still be applied there later, so it can count both
locally and in Redis: degraded mode errs toward denying, never toward over-admitting.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from redis.asyncio import Redis

from mc_limiter.algorithms import Evaluation
from mc_limiter.audit import AuditEvent, AuditSink, NullAuditSink
from mc_limiter.decisions import (
    UNLIMITED,
    CheckRequest,
    Decision,
    LimitRef,
    LimitResult,
    Source,
)
from mc_limiter.denials import DenyAggregator, DenySink
from mc_limiter.errors import (
    CostExceedsCapacityError,
    FieldViolation,
    InvalidArgumentError,
    LimiterError,
    NoMatchingRuleError,
    UnavailableError,
)
from mc_limiter.fallback import FallbackItem, LocalFallback
from mc_limiter.keys import counter_key, escape, remote_key
from mc_limiter.metrics import LimiterMetrics
from mc_limiter.periodic import Periodic
from mc_limiter.regions import RegionPeer, RegionSync
from mc_limiter.rules import (
    MAX_LIMIT,
    Algorithm,
    FailureMode,
    Limit,
    Mode,
    Rule,
    Sampling,
    Scope,
    StoredRule,
    parse_rule,
)
from mc_limiter.scripts import (
    CHECK_SCRIPT,
    LIMIT_REPLY,
    REFUND_SCRIPT,
    CheckBatcher,
    Packed,
    resp_int,
)
from mc_limiter.sharding import SHARD_UNAVAILABLE_ERRORS, CircuitBreaker, Shard, ShardRouter, hash64
from mc_limiter.store import ConfigSnapshot, RuleStore
from mc_limiter.throttle import ThrottleLevel, scale

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_REFRESH_ERRORS: tuple[type[BaseException], ...] = (UnavailableError, *SHARD_UNAVAILABLE_ERRORS)

MAX_ID_LENGTH = 256
MAX_KEY_LENGTH = 1024
# Decisions per script call in a batch: ~100 us of Redis time each at most, so a large
# CheckBatch does not hold up the shard's other clients for long.
_CALL_DECISIONS = 128


class UnmatchedPolicy(StrEnum):
    """What a check does when no rule matches: raise ``NoMatchingRuleError`` (NOT_FOUND) or
    admit with ``remaining = UNLIMITED`` (what Envoy's RLS expects)."""

    ERROR = "error"
    ALLOW = "allow"


@dataclass(frozen=True, slots=True)
class LimiterOptions:
    """Tuning of one limiter instance (the service's settings map onto this).

    ``fallback_share`` is this replica's share of its region (``1 / replicas``); local
    fallback buckets get ``limit * fallback_share`` (further divided by the number of regions
    for multi-region rules). ``socket_timeout_ms`` applies to clients made by ``from_urls``.
    """

    key_prefix: str = "mc:rl"
    region: str = "local"
    socket_timeout_ms: int = 100
    probe_interval_ms: int = 250
    config_refresh_ms: int = 1000
    region_sync_ms: int = 150
    vnodes: int = 160
    fallback_enabled: bool = True
    fallback_share: float = 1.0
    fallback_max_keys: int = 100_000
    unmatched: UnmatchedPolicy = UnmatchedPolicy.ERROR
    deny_flush_ms: int = 1000
    plan_cache_size: int = 10_000
    batch_wait_us: int = 0  # see CheckBatcher: how long busy unary checks wait for company

    def __post_init__(self) -> None:
        if not self.key_prefix or any(c in self.key_prefix for c in "{}"):
            raise ValueError("key_prefix must be non-empty and contain no braces")
        if not 0.0 < self.fallback_share <= 1.0:
            raise ValueError("fallback_share must be in (0, 1]")
        if self.batch_wait_us < 0:
            raise ValueError("batch_wait_us must be >= 0")


@dataclass(frozen=True, slots=True)
class _Planned:
    """A limit that applies to a (tenant, token, key), independent of per-request choices."""

    rule: Rule
    limit: Limit
    tag: str
    suffix: str
    key: str
    remote_keys: tuple[str, ...]
    sample: float  # hash bucket in [0, 100) for Sampling.HASH


@dataclass(slots=True)
class _Item:
    planned: _Planned
    enforce: bool
    limit: int
    burst: int
    # Copied from ``planned`` for the hot path (``_finish`` reads them for every check).
    rule_id: str = field(init=False)
    name: str = field(init=False)
    mode: Mode = field(init=False)
    window_ms: int = field(init=False)

    def __post_init__(self) -> None:
        self.rule_id = self.planned.rule.id
        self.name = self.planned.limit.name
        self.mode = Mode.ENFORCE if self.enforce else Mode.SHADOW
        self.window_ms = self.planned.limit.window_ms

    @property
    def window_us(self) -> int:
        return self.window_ms * 1000


@dataclass(slots=True)
class _Group:
    """The limits of one decision under one hash tag, hence on one shard, with what
    CHECK_LUA needs for them, encoded once: their KEYS, and ARGV after the cost (``n`` and
    the limits)."""

    tag: str
    shard: Shard
    calls: CheckBatcher
    items: list[_Item]
    keys: Packed
    args: Packed
    reply_len: int  # values of one decision in the script's reply
    regional: bool  # some limit is multi-region: consumption is published to peers

    @classmethod
    def of(cls, tag: str, shard: Shard, calls: CheckBatcher, items: list[_Item]) -> _Group:
        keys: list[str] = []
        args: list[str | int] = [len(items)]
        for item in items:
            lim = item.planned.limit
            keys.append(item.planned.key)
            keys.extend(item.planned.remote_keys)
            args += [
                _algo_code(item),
                item.limit,
                item.window_us,
                item.burst,
                lim.sub_windows,
                1 if item.enforce else 0,
                len(item.planned.remote_keys),
            ]
        regional = any(item.planned.rule.multi_region for item in items)
        return cls(
            tag,
            shard,
            calls,
            items,
            Packed.of(list(keys)),
            Packed.of(args),
            1 + LIMIT_REPLY * len(items),
            regional,
        )


@dataclass(slots=True)
class _Outcome:
    """One group's verdicts: from Redis (the script's ``reply``, this decision's values from
    index ``at``), or from the fallback (``evaluations`` and ``sources``)."""

    all_ok: bool
    now_us: float
    consumed: bool  # something was consumed in Redis (refundable)
    reply: list[Any] | None = None
    at: int = 0
    evaluations: list[Evaluation] | None = None
    sources: list[Source] | None = None

    def slot(self, i: int) -> int:
        return int(self.reply[self.at + LIMIT_REPLY * i + 5]) if self.reply else 0


@dataclass(slots=True)
class _Resolved:
    request: CheckRequest
    items: list[_Item]
    groups: list[_Group]  # the tenant's own tag first


@dataclass(slots=True)
class _Plan:
    """What applies to one (tenant, token, key) under the current configuration. ``resolved``
    is the request-independent resolution (items and groups) when no rule samples its
    enforcement per request; ``max_cost`` is the largest cost every enforced limit admits."""

    planned: tuple[_Planned, ...]
    items: list[_Item] | None = None
    groups: list[_Group] | None = None
    max_cost: int = MAX_LIMIT


class Limiter:
    """Rate-limit decisions and limit administration for one region.

    ``shards``: this region's Redis instances (see ``Shard.from_url``); ``config``: the
    Redis holding rules and throttle levels (default: the first shard); ``peers``: other
    regions for multi-region rules. Call ``start()`` before use and ``close()`` at the end
    (or use ``async with``). ``close()`` closes the Redis clients only if ``from_urls`` made
    them.
    """

    def __init__(
        self,
        shards: Sequence[Shard],
        *,
        config: Redis | None = None,
        options: LimiterOptions | None = None,
        peers: Sequence[RegionPeer] = (),
        metrics: LimiterMetrics | None = None,
        audit_sink: AuditSink | None = None,
        deny_sink: DenySink | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options or LimiterOptions()
        self.router = ShardRouter(shards, vnodes=self.options.vnodes)
        self.metrics = metrics or LimiterMetrics()
        self._check_ms = {
            path: self.metrics.check_ms.labels(path) for path in ("redis", "fallback", "batch")
        }
        self.store = RuleStore(config or self.router.shards[0].client, self.options.key_prefix)
        self._audit: AuditSink = audit_sink or NullAuditSink()
        self._denies = DenyAggregator(deny_sink, self.options.deny_flush_ms) if deny_sink else None
        self._rng = rng or random.Random()
        self._peers = list(peers)
        self._regions = 1 + len(self._peers)
        self._sync = RegionSync(
            self.options.region,
            self.router,
            self.options.key_prefix,
            self._peers,
            self.options.region_sync_ms,
        )
        self._snapshot = ConfigSnapshot()
        self._plans: OrderedDict[tuple[str, str, str], _Plan] = OrderedDict()
        self._plans_ring = self.router.generation
        self._calls: dict[str, CheckBatcher] = {}
        self._fallbacks: dict[str, LocalFallback] = {}
        self._refresh = Periodic(
            "limiter-config", self.options.config_refresh_ms / 1000, self._refresh_once
        )
        self._owned_clients: list[Redis] = []
        for shard in self.router.shards:
            self._attach_breaker(shard)

    @classmethod
    def from_urls(
        cls, urls: Mapping[str, str], *, config_url: str | None = None, **kwargs: Any
    ) -> Limiter:
        """Build from ``{shard name: redis url}``; the limiter owns and closes the clients."""
        options: LimiterOptions = kwargs.get("options") or LimiterOptions()
        shards = [Shard.from_url(n, u, options.socket_timeout_ms) for n, u in urls.items()]
        config = Redis.from_url(config_url) if config_url else None
        limiter = cls(shards, config=config, **kwargs)
        limiter._owned_clients = [s.client for s in shards] + ([config] if config else [])
        return limiter

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load scripts and configuration, start background loops. Raises
        ``UnavailableError`` if the config store cannot be read."""
        for shard in self.router.shards:
            await self._load_scripts(shard)
        await self.reload()
        self._refresh.start()
        self._sync.start()
        if self._denies:
            self._denies.start()

    async def close(self) -> None:
        await self._refresh.stop()
        await self._sync.close()
        if self._denies:
            await self._denies.close()
        for shard in self.router.shards:
            if shard.breaker:
                await shard.breaker.close()
        for calls in self._calls.values():
            await calls.close()
        for client in self._owned_clients:
            await client.aclose()

    async def __aenter__(self) -> Limiter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def add_shard(self, shard: Shard) -> None:
        """Add a shard to the ring: ~1/N of the tenants move to it (their counters restart)."""
        self._attach_breaker(shard)
        self.router.add(shard)
        self._plans.clear()

    def shard_for(self, tenant: str) -> Shard:
        """The shard holding ``tenant``'s counters (global pools live elsewhere)."""
        return self.router.shard_for(f"t:{escape(tenant)}")

    async def reload(self) -> None:
        try:
            snapshot = await self.store.load()
        except SHARD_UNAVAILABLE_ERRORS as exc:
            raise UnavailableError(f"limiter config store unreachable: {exc!r}") from exc
        self._snapshot = snapshot
        self._plans.clear()

    async def sync_regions(self) -> None:
        """Publish multi-region usage to the peers now (the loop does this periodically)."""
        await self._sync.sync_once()

    async def flush_denies(self) -> None:
        if self._denies:
            await self._denies.flush()

    # ---------------------------------------------------------------- checks

    async def check(
        self,
        tenant: str,
        token: str,
        key: str,
        cost: int = 1,
        *,
        unmatched_allow: bool | None = None,
    ) -> Decision:
        """Decide (and if admitted, consume) ``cost`` units for ``(tenant, token, key)``.

        ``cost=0`` peeks: it reports whether a 1-unit request would be admitted now and the
        current usage, and consumes nothing. Raises ``InvalidArgumentError`` (empty tenant,
        negative cost), ``NoMatchingRuleError`` (no rule matches and unmatched=error) or
        ``CostExceedsCapacityError`` (cost above an enforced limit's capacity). A shard outage
        never raises: the decision then comes from the fallback. ``unmatched_allow``
        overrides ``options.unmatched`` for this call (Envoy RLS admits unmatched
        descriptors).
        """
        request = CheckRequest(tenant, token, key, cost)
        _validate(request)
        unmatched = self._unmatched(unmatched_allow)
        return await self._check_one(request, record=cost > 0, unmatched=unmatched)

    async def usage(self, tenant: str, token: str, key: str) -> Decision:
        """Current usage of every limit that applies, without consuming (a peek that returns
        an empty decision instead of raising when no rule matches); for policy input."""
        request = CheckRequest(tenant, token, key, 0)
        _validate(request)
        return await self._check_one(request, record=False, unmatched=UnmatchedPolicy.ALLOW)

    async def check_batch(
        self, requests: Sequence[CheckRequest], *, unmatched_allow: bool | None = None
    ) -> list[Decision]:
        """Many checks, each atomic on its own, in one script call per shard.

        Every request is validated and resolved first (violations name
        ``requests[i].field``; other errors carry ``request_index``): if one fails, nothing
        is evaluated.
        """
        for i, request in enumerate(requests):
            _validate(request, i)
        started = time.perf_counter()
        unmatched = self._unmatched(unmatched_allow)
        resolved = []
        for i, request in enumerate(requests):
            try:
                resolved.append(self._resolve(request, unmatched))
            except LimiterError as exc:
                exc.request_index = i
                raise
        decisions: list[Decision | None] = [None] * len(requests)
        single: dict[str, list[tuple[int, _Group]]] = {}
        multi: list[int] = []
        for i, res in enumerate(resolved):
            if not res.items:
                decisions[i] = _unmatched_decision()
            elif len(res.groups) == 1:
                group = res.groups[0]
                single.setdefault(group.shard.name, []).append((i, group))
            else:
                multi.append(i)

        async def run_shard(batch: list[tuple[int, _Group]]) -> None:
            outcomes = await self._run_on_shard(
                batch[0][1].shard, [(group, resolved[i].request.cost) for i, group in batch]
            )
            for (i, group), outcome in zip(batch, outcomes, strict=True):
                request = resolved[i].request
                decisions[i] = self._finish(request, [(group.items, outcome)], request.cost > 0)

        async def run_multi(i: int) -> None:
            decisions[i] = await self._decide(resolved[i], record=resolved[i].request.cost > 0)

        jobs = [*(run_shard(batch) for batch in single.values()), *map(run_multi, multi)]
        if len(jobs) == 1:
            await jobs[0]
        elif jobs:
            await asyncio.gather(*jobs)
        out = [d if d is not None else _unmatched_decision() for d in decisions]
        self._check_ms["batch"].observe((time.perf_counter() - started) * 1000)
        return out

    def _unmatched(self, allow: bool | None) -> UnmatchedPolicy:
        if allow is None:
            return self.options.unmatched
        return UnmatchedPolicy.ALLOW if allow else UnmatchedPolicy.ERROR

    async def _check_one(
        self, request: CheckRequest, *, record: bool, unmatched: UnmatchedPolicy
    ) -> Decision:
        started = time.perf_counter()
        resolved = self._resolve(request, unmatched)
        if not resolved.items:
            return _unmatched_decision()
        decision = await self._decide(resolved, record=record)
        path = "fallback" if decision.degraded else "redis"
        self._check_ms[path].observe((time.perf_counter() - started) * 1000)
        return decision

    def _resolve(self, request: CheckRequest, unmatched: UnmatchedPolicy) -> _Resolved:
        plan = self._plan(request.tenant, request.token, request.key)
        if plan.groups is not None and plan.items is not None:
            if request.cost > plan.max_cost:
                _check_capacity(plan.items, request.cost)
            return _Resolved(request, plan.items, plan.groups)
        if not plan.planned:
            if unmatched is UnmatchedPolicy.ERROR:
                raise NoMatchingRuleError(request.tenant, request.token, request.key)
            return _Resolved(request, [], [])
        items = self._items(request.tenant, plan.planned)
        _check_capacity(items, request.cost)
        return _Resolved(request, items, self._groups(items))

    def _items(self, tenant: str, planned: tuple[_Planned, ...]) -> list[_Item]:
        """Effective limits: throttled, and enforced or shadowed (sampled per rule)."""
        snapshot = self._snapshot
        factor = snapshot.throttle_factor(tenant)
        enforce_by_rule: dict[str, bool] = {}
        items = []
        for p in planned:
            enforce = enforce_by_rule.get(p.rule.id)
            if enforce is None:
                enforce = self._enforced(p, snapshot.global_shadow)
                enforce_by_rule[p.rule.id] = enforce
            items.append(
                _Item(p, enforce, scale(p.limit.limit, factor), scale(p.limit.capacity, factor))
            )
        return items

    def _groups(self, items: list[_Item]) -> list[_Group]:
        by_tag: dict[str, list[_Item]] = {}
        for item in items:
            by_tag.setdefault(item.planned.tag, []).append(item)
        groups = []
        for tag in sorted(by_tag, key=lambda t: (not t.startswith("t:"), t)):
            shard = self.router.shard_for(tag)
            groups.append(_Group.of(tag, shard, self._calls_for(shard), by_tag[tag]))
        return groups

    def _calls_for(self, shard: Shard) -> CheckBatcher:
        calls = self._calls.get(shard.name)
        if calls is None or calls.client is not shard.client:
            calls = self._calls[shard.name] = CheckBatcher(
                shard.client, batch_wait_us=self.options.batch_wait_us
            )
        return calls

    def _enforced(self, p: _Planned, global_shadow: bool) -> bool:
        rule = p.rule
        if global_shadow or rule.mode is Mode.SHADOW:
            return False
        if rule.enforce_percent >= 100.0:
            return True
        if rule.enforce_sampling is Sampling.HASH:
            return p.sample < rule.enforce_percent
        return self._rng.random() * 100.0 < rule.enforce_percent

    def _plan(self, tenant: str, token: str, key: str) -> _Plan:
        if self._plans_ring != self.router.generation:
            self._plans.clear()  # shards changed: cached groups may name the wrong one
            self._plans_ring = self.router.generation
        cache_key = (tenant, token, key)
        cached = self._plans.get(cache_key)
        if cached is not None:
            self._plans.move_to_end(cache_key)
            return cached
        prefix = self.options.key_prefix
        planned: list[_Planned] = []
        rules = self._snapshot.rules_for(tenant, token, key)
        for rule in rules:
            if rule.scope is Scope.GLOBAL:
                tag, subject = f"g:{escape(rule.id)}", ""
            else:
                tag = f"t:{escape(tenant)}"
                subject = {
                    Scope.TENANT: "",
                    Scope.TOKEN: escape(token),
                    Scope.KEY: escape(key),
                    Scope.TOKEN_KEY: f"{escape(token)}:{escape(key)}",
                }[rule.scope]
            sample = hash64(f"{rule.id}\0{tenant}\0{token}\0{key}") % 10_000 / 100.0
            for limit in rule.limits:
                shape = (
                    f"g{limit.window_ms}"
                    if limit.algorithm is Algorithm.GCRA
                    else f"s{limit.window_ms}x{limit.sub_windows}"
                )
                suffix = f"{escape(rule.id)}:{escape(limit.name)}:{shape}:{rule.scope}:{subject}"
                remotes = (
                    tuple(remote_key(prefix, tag, suffix, peer) for peer in self._sync.peer_names)
                    if rule.multi_region
                    else ()
                )
                planned.append(
                    _Planned(
                        rule, limit, tag, suffix, counter_key(prefix, tag, suffix), remotes, sample
                    )
                )
        plan = _Plan(tuple(planned))
        sampled = any(
            r.enforce_percent < 100.0 and r.enforce_sampling is Sampling.RANDOM for r in rules
        )
        if planned and not sampled:
            # Nothing varies per request (throttle levels and the shadow switch are part of
            # the snapshot, and a reload clears this cache): resolve once for every check.
            plan.items = self._items(tenant, plan.planned)
            plan.groups = self._groups(plan.items)
            plan.max_cost = min((i.burst for i in plan.items if i.enforce), default=MAX_LIMIT)
        self._plans[cache_key] = plan
        if len(self._plans) > self.options.plan_cache_size:
            self._plans.popitem(last=False)
        return plan

    async def _decide(self, resolved: _Resolved, *, record: bool) -> Decision:
        cost = resolved.request.cost
        groups = resolved.groups
        parts: list[tuple[list[_Item], _Outcome]] = []
        if len(groups) == 1:
            parts = [(groups[0].items, await self._run_group(groups[0], cost))]
        elif cost == 0:
            outcomes = await asyncio.gather(*(self._run_group(g, cost) for g in groups))
            parts = [(g.items, o) for g, o in zip(groups, outcomes, strict=True)]
        else:
            denied = False
            for group in groups:
                outcome = await self._run_group(group, cost, consume=not denied)
                parts.append((group.items, outcome))
                if not outcome.all_ok and not denied:
                    denied = True
                    await self._refund(parts[:-1], cost)
        return self._finish(resolved.request, parts, record)

    async def _run_group(self, group: _Group, cost: int, consume: bool = True) -> _Outcome:
        # After an earlier shard denied, later shards are only peeked (nothing consumed);
        # their verdicts are then for a 1-unit request and are informational.
        cost = cost if consume else 0
        shard = group.shard
        if shard.up:
            try:
                keys, args = group.keys, group.args
                reply, at = await group.calls.submit(
                    [keys.data],
                    keys.count,
                    [resp_int(cost), args.data],
                    1 + args.count,
                    1,
                    group.reply_len,
                )
            except SHARD_UNAVAILABLE_ERRORS as exc:
                shard.trip(exc)
            else:
                return self._redis_outcome(group, cost, reply, at)
        return self._fallback(shard, group.items, cost)

    async def _run_on_shard(self, shard: Shard, batch: list[tuple[_Group, int]]) -> list[_Outcome]:
        """Decide single-group checks on ``shard``, in order, in script calls of up to
        ``_CALL_DECISIONS`` decisions."""
        if shard.up:
            calls = batch[0][0].calls
            chunks = [batch[i : i + _CALL_DECISIONS] for i in range(0, len(batch), _CALL_DECISIONS)]
            futures = []
            for chunk in chunks:
                keys: list[bytes] = []
                args: list[bytes] = []
                nkeys = nargs = reply_len = 0
                for group, cost in chunk:
                    keys.append(group.keys.data)
                    args += (resp_int(cost), group.args.data)
                    nkeys += group.keys.count
                    nargs += 1 + group.args.count
                    reply_len += group.reply_len
                futures.append(calls.submit(keys, nkeys, args, nargs, len(chunk), reply_len))
            results: list[Any] = await asyncio.gather(*futures, return_exceptions=True)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is None:
                outcomes = []
                for chunk, (reply, at) in zip(chunks, results, strict=True):
                    for group, cost in chunk:
                        outcomes.append(self._redis_outcome(group, cost, reply, at))
                        at += group.reply_len
                return outcomes
            if not isinstance(failed, SHARD_UNAVAILABLE_ERRORS):
                raise failed
            shard.trip(failed)
        return [self._fallback(shard, group.items, cost) for group, cost in batch]

    def _redis_outcome(self, group: _Group, cost: int, reply: list[Any], at: int) -> _Outcome:
        all_ok = reply[at] == 1
        consumed = cost > 0 and all_ok and 1 in reply[at + 1 : at + group.reply_len : LIMIT_REPLY]
        if consumed and group.regional:
            for item in group.items:
                if item.planned.rule.multi_region:
                    self._touch_region(item)
        return _Outcome(all_ok, float(reply[0]), consumed, reply, at)

    def _fallback(self, shard: Shard, items: list[_Item], cost: int) -> _Outcome:
        local = self._fallbacks.setdefault(
            shard.name, LocalFallback(self.options.fallback_max_keys)
        )
        now = local.now_us()
        evaluations: list[Evaluation | None] = [None] * len(items)
        sources: list[Source] = [Source.FALLBACK] * len(items)
        local_idx: list[int] = []
        local_items: list[FallbackItem] = []
        probe_us = self.options.probe_interval_ms * 1000.0
        for i, item in enumerate(items):
            rule = item.planned.rule
            if self.options.fallback_enabled and rule.local_fallback:
                share = self.options.fallback_share / (self._regions if rule.multi_region else 1)
                lim = item.planned.limit
                local_idx.append(i)
                local_items.append(
                    FallbackItem(
                        key=item.planned.key,
                        algorithm=lim.algorithm,
                        limit=scale(item.limit, share),
                        window_us=float(item.window_us),
                        burst=scale(item.burst, share),
                        sub_windows=lim.sub_windows,
                        enforce=item.enforce,
                    )
                )
            elif rule.failure_mode is FailureMode.FAIL_OPEN:
                evaluations[i] = Evaluation(True, item.limit, 0.0, 0)
                sources[i] = Source.FAIL_OPEN
            else:
                evaluations[i] = Evaluation(False, 0, probe_us, 0)
                sources[i] = Source.FAIL_CLOSED
        static_ok = all(
            e.allowed for e, it in zip(evaluations, items, strict=True) if e and it.enforce
        )
        all_ok = static_ok
        if local_items:
            local_ok, local_evals = local.decide(local_items, cost, now, static_ok)
            all_ok = static_ok and local_ok
            for i, evaluation in zip(local_idx, local_evals, strict=True):
                evaluations[i] = evaluation
        done = [e if e is not None else Evaluation(True, 0, 0.0, 0) for e in evaluations]
        return _Outcome(all_ok, now, False, evaluations=done, sources=sources)

    async def _refund(self, parts: list[tuple[list[_Item], _Outcome]], cost: int) -> None:
        for items, outcome in parts:
            if not outcome.consumed:
                continue  # fallback consumption is not refunded: errs toward denying
            keys: list[str] = []
            args: list[str | int] = [cost, 0]
            reply, at = outcome.reply, outcome.at
            for i, item in enumerate(items):
                if reply is None or reply[at + 1 + LIMIT_REPLY * i] != 1:
                    continue
                keys.append(item.planned.key)
                args += [_algo_code(item), item.limit, item.window_us, outcome.slot(i)]
            args[1] = len(keys)
            shard = self.router.shard_for(items[0].planned.tag)
            try:
                await REFUND_SCRIPT.run(shard.client, keys, args)
            except SHARD_UNAVAILABLE_ERRORS as exc:
                shard.trip(exc)

    def _touch_region(self, item: _Item) -> None:
        limit = item.planned.limit
        self._sync.touch(item.planned.tag, item.planned.suffix, limit.window_ms, limit.sub_windows)

    def _finish(
        self,
        request: CheckRequest,
        parts: list[tuple[list[_Item], _Outcome]],
        record: bool,
    ) -> Decision:
        # Redis verdicts are read straight from the script's reply.
        results: list[LimitResult] = []
        degraded = False
        now_us = 0.0
        for items, outcome in parts:
            if outcome.now_us > now_us:
                now_us = outcome.now_us
            reply = outcome.reply
            if reply is not None:
                at = outcome.at + 1
                for item in items:
                    retry_us = reply[at + 2]
                    results.append(
                        LimitResult(
                            item.rule_id,
                            item.name,
                            item.mode,
                            reply[at] == 1,
                            reply[at + 1],
                            0 if retry_us <= 0 else -(-retry_us // 1000),
                            reply[at + 3],
                            item.limit,
                            item.window_ms,
                            Source.REDIS,
                        )
                    )
                    at += LIMIT_REPLY
                continue
            assert outcome.evaluations is not None and outcome.sources is not None
            for item, evaluation, source in zip(
                items, outcome.evaluations, outcome.sources, strict=True
            ):
                retry = evaluation.retry_us
                results.append(
                    LimitResult(
                        item.rule_id,
                        item.name,
                        item.mode,
                        evaluation.allowed,
                        evaluation.remaining,
                        0 if retry <= 0 else math.ceil(retry / 1000),
                        evaluation.used,
                        item.limit,
                        item.window_ms,
                        source,
                    )
                )
                degraded = degraded or source is not Source.REDIS
        denied: list[LimitResult] = []
        would_deny: list[LimitResult] = []
        longest: LimitResult | None = None  # the denied limit with the longest wait
        least: LimitResult | None = None  # the enforced limit with the least remaining
        for result in results:
            if result.mode is Mode.SHADOW:
                if not result.allowed:
                    would_deny.append(result)
                continue
            if least is None or result.remaining < least.remaining:
                least = result
            if not result.allowed:
                denied.append(result)
                if longest is None or result.retry_after_ms > longest.retry_after_ms:
                    longest = result
        deciding = longest or least
        retry_after_ms = max(1, longest.retry_after_ms) if longest else 0
        remaining = least.remaining if least else min(r.remaining for r in results)
        if record and (denied or would_deny):
            self._record(request, denied, would_deny, now_us)
        return Decision(
            not denied,
            retry_after_ms,
            remaining,
            LimitRef(deciding.rule_id, deciding.limit_name) if deciding else None,
            tuple(results),
            bool(would_deny),
            degraded,
            int(now_us // 1000),
        )

    def _record(
        self,
        request: CheckRequest,
        denied: list[LimitResult],
        would_deny: list[LimitResult],
        now_us: float,
    ) -> None:
        second = int(now_us // 1_000_000)
        for r in denied:
            self.metrics.denies.labels(r.rule_id, "enforce").inc()
            if self._denies:
                self._denies.record(
                    request.tenant, r.rule_id, r.limit_name, request.key, "enforce", second
                )
        for r in would_deny:
            self.metrics.denies.labels(r.rule_id, "shadow").inc()
            self.metrics.shadow_would_deny.labels(r.rule_id).inc()
            if self._denies:
                self._denies.record(
                    request.tenant, r.rule_id, r.limit_name, request.key, "shadow", second
                )

    # ---------------------------------------------------------------- administration

    async def put_rule(
        self,
        rule: Rule | Mapping[str, Any],
        *,
        actor: str,
        expected_revision: int | None = None,
        reason: str = "",
    ) -> StoredRule:
        """Create or replace a rule (validated; ``expected_revision`` 0 = must not exist)."""
        _require_actor(actor)
        parsed = rule if isinstance(rule, Rule) else parse_rule(rule)
        before = self._snapshot.rules.get(parsed.id)
        stored = await self._admin(self.store.put_rule(parsed, actor, expected_revision))
        await self._audit_event(
            "limiter.rule.put",
            actor,
            parsed.id,
            before.rule.model_dump(mode="json") if before else None,
            parsed.model_dump(mode="json"),
            reason,
        )
        await self._reload_quietly()
        return stored

    async def get_rule(self, rule_id: str) -> StoredRule:
        return await self._admin(self.store.get_rule(rule_id))

    async def list_rules(self, tenant: str | None = None) -> list[StoredRule]:
        """All rules, or those that can apply to ``tenant`` (its literal rules and wildcards
        matching it), sorted by id."""
        await self._reload_quietly()
        rules = sorted(self._snapshot.rules.values(), key=lambda s: s.rule.id)
        if tenant is None:
            return rules
        return [s for s in rules if s.rule.match.matches_tenant(tenant)]

    async def delete_rule(
        self, rule_id: str, *, actor: str, expected_revision: int | None = None, reason: str = ""
    ) -> None:
        _require_actor(actor)
        before = self._snapshot.rules.get(rule_id)
        await self._admin(self.store.delete_rule(rule_id, expected_revision))
        await self._audit_event(
            "limiter.rule.delete",
            actor,
            rule_id,
            before.rule.model_dump(mode="json") if before else None,
            None,
            reason,
        )
        await self._reload_quietly()

    async def set_throttle(
        self, tenant: str, level: ThrottleLevel | str, *, actor: str, reason: str = ""
    ) -> AuditEvent:
        """Set a tenant's throttle level; returns (and emits) the audit record."""
        _require_actor(actor)
        if not tenant:
            raise InvalidArgumentError.for_field("tenant", "must not be empty")
        try:
            new_level = ThrottleLevel(level)
        except ValueError:
            allowed = ", ".join(lv.value for lv in ThrottleLevel)
            raise InvalidArgumentError.for_field("level", f"must be one of {allowed}") from None
        previous = await self._admin(self.store.set_throttle(tenant, new_level))
        event = await self._audit_event(
            "limiter.throttle.set", actor, tenant, previous.value, new_level.value, reason, tenant
        )
        await self._reload_quietly()
        return event

    def throttle_level(self, tenant: str) -> ThrottleLevel:
        return self._snapshot.throttles.get(tenant, ThrottleLevel.NONE)

    async def set_global_shadow(self, enabled: bool, *, actor: str, reason: str = "") -> AuditEvent:
        """Switch every rule to shadow mode (counts, never denies) or back."""
        _require_actor(actor)
        previous = await self._admin(self.store.set_global_shadow(enabled))
        event = await self._audit_event(
            "limiter.shadow.global", actor, "global", previous, enabled, reason
        )
        await self._reload_quietly()
        return event

    @property
    def global_shadow(self) -> bool:
        return self._snapshot.global_shadow

    async def _audit_event(
        self,
        action: str,
        actor: str,
        target: str,
        before: Any,
        after: Any,
        reason: str,
        tenant: str | None = None,
    ) -> AuditEvent:
        event = AuditEvent(action, actor, target, before, after, reason, tenant)
        await self._audit.emit(event)
        return event

    async def _admin(self, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except SHARD_UNAVAILABLE_ERRORS as exc:
            raise UnavailableError(f"limiter config store unreachable: {exc!r}") from exc

    async def _reload_quietly(self) -> None:
        try:
            await self.reload()
        except UnavailableError:
            log.warning("config reload failed; keeping version %s", self._snapshot.version)

    async def _refresh_once(self) -> None:
        try:
            if await self.store.version() != self._snapshot.version:
                await self.reload()
        except _REFRESH_ERRORS:
            log.debug("config refresh skipped: store unreachable")

    # ---------------------------------------------------------------- shards

    def _attach_breaker(self, shard: Shard) -> None:
        def on_change(up: bool) -> None:
            self.metrics.degraded.labels(shard.name).set(0 if up else 1)
            if up:
                self._fallbacks.pop(shard.name, None)

        shard.breaker = CircuitBreaker(
            shard.name, shard.client, self.options.probe_interval_ms, on_change
        )
        self.metrics.degraded.labels(shard.name).set(0)

    async def _load_scripts(self, shard: Shard) -> None:
        try:
            await CHECK_SCRIPT.load(shard.client)
            await REFUND_SCRIPT.load(shard.client)
        except SHARD_UNAVAILABLE_ERRORS as exc:
            shard.trip(exc)


def _validate(request: CheckRequest, index: int | None = None) -> None:
    tenant, token, key, cost = request.tenant, request.token, request.key, request.cost
    if (
        type(tenant) is str
        and 0 < len(tenant) <= MAX_ID_LENGTH
        and type(token) is str
        and len(token) <= MAX_KEY_LENGTH
        and type(key) is str
        and len(key) <= MAX_KEY_LENGTH
        and type(cost) is int
        and 0 <= cost <= MAX_LIMIT
    ):
        return  # the usual case, without building the list of violations
    violations = []
    if not isinstance(request.tenant, str) or not request.tenant:
        violations.append(("tenant", "must not be empty"))
    elif len(request.tenant) > MAX_ID_LENGTH:
        violations.append(("tenant", f"must be at most {MAX_ID_LENGTH} characters"))
    for name, value in (("token", request.token), ("key", request.key)):
        if not isinstance(value, str):
            violations.append((name, "must be a string"))
        elif len(value) > MAX_KEY_LENGTH:
            violations.append((name, f"must be at most {MAX_KEY_LENGTH} characters"))
    cost = request.cost
    if isinstance(cost, bool) or not isinstance(cost, int):
        violations.append(("cost", "must be an integer"))
    elif cost < 0:
        violations.append(("cost", "must not be negative"))
    elif cost > MAX_LIMIT:
        violations.append(("cost", f"must be at most {MAX_LIMIT}"))
    if violations:
        prefix = "" if index is None else f"requests[{index}]."
        found = [FieldViolation(prefix + f, d) for f, d in violations]
        raise InvalidArgumentError("; ".join(f"{v.field}: {v.description}" for v in found), found)


def _require_actor(actor: str) -> None:
    if not actor:
        raise InvalidArgumentError.for_field("actor", "operator calls need an actor")


def _algo_code(item: _Item) -> int:
    return 0 if item.planned.limit.algorithm is Algorithm.GCRA else 1


def _check_capacity(items: list[_Item], cost: int) -> None:
    for item in items:
        if item.enforce and cost > item.burst:
            lim = item.planned.limit
            raise CostExceedsCapacityError(item.planned.rule.id, lim.name, cost, item.burst)


def _unmatched_decision() -> Decision:
    return Decision(
        allowed=True,
        retry_after_ms=0,
        remaining=UNLIMITED,
        deciding=None,
        results=(),
        shadow_would_deny=False,
        degraded=False,
        now_ms=int(time.time() * 1000),
    )
