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
from redis.exceptions import NoScriptError

from mc_limiter.algorithms import Evaluation
from mc_limiter.audit import AuditEvent, AuditSink, NullAuditSink
from mc_limiter.decisions import (
    UNLIMITED,
    CheckRequest,
    Decision,
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
from mc_limiter.scripts import CHECK_SCRIPT, REFUND_SCRIPT
from mc_limiter.sharding import SHARD_UNAVAILABLE_ERRORS, CircuitBreaker, Shard, ShardRouter, hash64
from mc_limiter.store import ConfigSnapshot, RuleStore
from mc_limiter.throttle import ThrottleLevel, scale

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_REFRESH_ERRORS: tuple[type[BaseException], ...] = (UnavailableError, *SHARD_UNAVAILABLE_ERRORS)

MAX_ID_LENGTH = 256
MAX_KEY_LENGTH = 1024


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

    def __post_init__(self) -> None:
        if not self.key_prefix or any(c in self.key_prefix for c in "{}"):
            raise ValueError("key_prefix must be non-empty and contain no braces")
        if not 0.0 < self.fallback_share <= 1.0:
            raise ValueError("fallback_share must be in (0, 1]")


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

    @property
    def window_us(self) -> int:
        return self.planned.limit.window_ms * 1000


@dataclass(slots=True)
class _Outcome:
    all_ok: bool
    evaluations: list[Evaluation]
    sources: list[Source]
    slots: list[int]
    now_us: float
    consumed: bool  # something was consumed in Redis (refundable)


@dataclass(slots=True)
class _Resolved:
    request: CheckRequest
    items: list[_Item]
    groups: dict[str, list[_Item]] = field(default_factory=dict)


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
        self._plans: OrderedDict[tuple[str, str, str], tuple[_Planned, ...]] = OrderedDict()
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
        _validate(request, "")
        unmatched = self._unmatched(unmatched_allow)
        return await self._check_one(request, record=cost > 0, unmatched=unmatched)

    async def usage(self, tenant: str, token: str, key: str) -> Decision:
        """Current usage of every limit that applies, without consuming (a peek that returns
        an empty decision instead of raising when no rule matches); for policy input."""
        request = CheckRequest(tenant, token, key, 0)
        _validate(request, "")
        return await self._check_one(request, record=False, unmatched=UnmatchedPolicy.ALLOW)

    async def check_batch(
        self, requests: Sequence[CheckRequest], *, unmatched_allow: bool | None = None
    ) -> list[Decision]:
        """Many checks, each atomic on its own, in one pipelined round trip per shard.

        Every request is validated and resolved first (violations name
        ``requests[i].field``; other errors carry ``request_index``): if one fails, nothing
        is evaluated.
        """
        for i, request in enumerate(requests):
            _validate(request, f"requests[{i}].")
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
        single: dict[str, list[tuple[int, list[_Item]]]] = {}
        multi: list[int] = []
        for i, res in enumerate(resolved):
            if not res.items:
                decisions[i] = _unmatched_decision()
            elif len(res.groups) == 1:
                tag, items = next(iter(res.groups.items()))
                shard = self.router.shard_for(tag)
                single.setdefault(shard.name, []).append((i, items))
            else:
                multi.append(i)

        async def run_shard(name: str, batch: list[tuple[int, list[_Item]]]) -> None:
            shard = self.router.get(name)
            outcomes = await self._run_on_shard(
                shard, [(items, resolved[i].request.cost) for i, items in batch]
            )
            for (i, items), outcome in zip(batch, outcomes, strict=True):
                request = resolved[i].request
                decisions[i] = self._finish(request, [(items, outcome)], request.cost > 0)

        async def run_multi(i: int) -> None:
            decisions[i] = await self._decide(resolved[i], record=resolved[i].request.cost > 0)

        await asyncio.gather(
            *(run_shard(name, batch) for name, batch in single.items()),
            *(run_multi(i) for i in multi),
        )
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
        snapshot = self._snapshot
        planned = self._plan(request.tenant, request.token, request.key)
        if not planned:
            if unmatched is UnmatchedPolicy.ERROR:
                raise NoMatchingRuleError(request.tenant, request.token, request.key)
            return _Resolved(request, [])
        factor = snapshot.throttle_factor(request.tenant)
        enforce_by_rule: dict[str, bool] = {}
        resolved = _Resolved(request, [])
        for p in planned:
            enforce = enforce_by_rule.get(p.rule.id)
            if enforce is None:
                enforce = self._enforced(p, snapshot.global_shadow)
                enforce_by_rule[p.rule.id] = enforce
            item = _Item(p, enforce, scale(p.limit.limit, factor), scale(p.limit.capacity, factor))
            if enforce and request.cost > item.burst:
                raise CostExceedsCapacityError(p.rule.id, p.limit.name, request.cost, item.burst)
            resolved.items.append(item)
            resolved.groups.setdefault(p.tag, []).append(item)
        return resolved

    def _enforced(self, p: _Planned, global_shadow: bool) -> bool:
        rule = p.rule
        if global_shadow or rule.mode is Mode.SHADOW:
            return False
        if rule.enforce_percent >= 100.0:
            return True
        if rule.enforce_sampling is Sampling.HASH:
            return p.sample < rule.enforce_percent
        return self._rng.random() * 100.0 < rule.enforce_percent

    def _plan(self, tenant: str, token: str, key: str) -> tuple[_Planned, ...]:
        cache_key = (tenant, token, key)
        cached = self._plans.get(cache_key)
        if cached is not None:
            self._plans.move_to_end(cache_key)
            return cached
        prefix = self.options.key_prefix
        planned: list[_Planned] = []
        for rule in self._snapshot.rules_for(tenant, token, key):
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
        result = tuple(planned)
        self._plans[cache_key] = result
        if len(self._plans) > self.options.plan_cache_size:
            self._plans.popitem(last=False)
        return result

    async def _decide(self, resolved: _Resolved, *, record: bool) -> Decision:
        cost = resolved.request.cost
        tags = sorted(resolved.groups, key=lambda t: (not t.startswith("t:"), t))
        parts: list[tuple[list[_Item], _Outcome]] = []
        if len(tags) == 1 or cost == 0:
            outcomes = await asyncio.gather(
                *(self._run_group(resolved.groups[tag], cost) for tag in tags)
            )
            parts = list(zip((resolved.groups[t] for t in tags), outcomes, strict=True))
        else:
            denied = False
            for tag in tags:
                items = resolved.groups[tag]
                outcome = await self._run_group(items, cost, consume=not denied)
                parts.append((items, outcome))
                if not outcome.all_ok and not denied:
                    denied = True
                    await self._refund(parts[:-1], cost)
        return self._finish(resolved.request, parts, record)

    async def _run_group(self, items: list[_Item], cost: int, consume: bool = True) -> _Outcome:
        shard = self.router.shard_for(items[0].planned.tag)
        # After an earlier shard denied, later shards are only peeked (nothing consumed);
        # their verdicts are then for a 1-unit request and are informational.
        (outcome,) = await self._run_on_shard(shard, [(items, cost if consume else 0)])
        return outcome

    async def _run_on_shard(
        self, shard: Shard, batch: list[tuple[list[_Item], int]]
    ) -> list[_Outcome]:
        if not shard.up:
            return [self._fallback(shard, items, cost) for items, cost in batch]
        calls = [_script_call(items, cost) for items, cost in batch]
        try:
            if len(calls) == 1:
                keys, args = calls[0]
                replies: list[Any] = [await CHECK_SCRIPT.run(shard.client, keys, args)]
            else:
                replies = await self._pipelined(shard, calls)
        except SHARD_UNAVAILABLE_ERRORS as exc:
            shard.trip(exc)
            return [self._fallback(shard, items, cost) for items, cost in batch]
        outcomes = []
        for (items, cost), reply in zip(batch, replies, strict=True):
            outcome = _parse_reply(items, reply, cost)
            if outcome.consumed:
                for item in items:
                    if item.planned.rule.multi_region:
                        self._touch_region(item)
            outcomes.append(outcome)
        return outcomes

    async def _pipelined(
        self, shard: Shard, calls: list[tuple[list[str], list[str | int]]]
    ) -> list[Any]:
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            async with shard.client.pipeline(transaction=False) as pipe:
                for i in todo:
                    keys, args = calls[i]
                    pipe.evalsha(CHECK_SCRIPT.sha, len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
            retry = []
            for i, result in zip(todo, results, strict=True):
                if isinstance(result, NoScriptError) and attempt == 0:
                    retry.append(i)
                elif isinstance(result, BaseException):
                    raise result
                else:
                    replies[i] = result
            if not retry:
                break
            await CHECK_SCRIPT.load(shard.client)
            todo = retry
        return replies

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
        return _Outcome(all_ok, done, sources, [0] * len(items), now, consumed=False)

    async def _refund(self, parts: list[tuple[list[_Item], _Outcome]], cost: int) -> None:
        for items, outcome in parts:
            if not outcome.consumed:
                continue  # fallback consumption is not refunded: errs toward denying
            keys: list[str] = []
            args: list[str | int] = [cost, 0]
            for item, evaluation, slot in zip(
                items, outcome.evaluations, outcome.slots, strict=True
            ):
                if not evaluation.allowed:
                    continue
                keys.append(item.planned.key)
                args += [_algo_code(item), item.limit, item.window_us, slot]
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
        results: list[LimitResult] = []
        allowed = True
        degraded = False
        now_us = 0.0
        for items, outcome in parts:
            allowed = allowed and outcome.all_ok
            now_us = max(now_us, outcome.now_us)
            for item, evaluation, source in zip(
                items, outcome.evaluations, outcome.sources, strict=True
            ):
                degraded = degraded or source is not Source.REDIS
                lim = item.planned.limit
                results.append(
                    LimitResult(
                        rule_id=item.planned.rule.id,
                        limit_name=lim.name,
                        mode=Mode.ENFORCE if item.enforce else Mode.SHADOW,
                        allowed=evaluation.allowed,
                        remaining=evaluation.remaining,
                        retry_after_ms=_ceil_ms(evaluation.retry_us),
                        used=evaluation.used,
                        limit=item.limit,
                        window_ms=lim.window_ms,
                        source=source,
                    )
                )
        enforced = [r for r in results if r.mode is Mode.ENFORCE]
        denied = [r for r in enforced if not r.allowed]
        would_deny = [r for r in results if r.mode is Mode.SHADOW and not r.allowed]
        deciding: LimitResult | None
        if denied:
            allowed = False
            deciding = max(denied, key=lambda r: r.retry_after_ms)
            retry_after_ms = max(1, deciding.retry_after_ms)
        else:
            allowed = True
            retry_after_ms = 0
            deciding = min(enforced, key=lambda r: r.remaining) if enforced else None
        pool = enforced or results
        remaining = min(r.remaining for r in pool)
        if record:
            self._record(request, denied, would_deny, now_us)
        return Decision(
            allowed=allowed,
            retry_after_ms=retry_after_ms,
            remaining=remaining,
            deciding=deciding.ref if deciding else None,
            results=tuple(results),
            shadow_would_deny=bool(would_deny),
            degraded=degraded,
            now_ms=int(now_us // 1000),
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


def _validate(request: CheckRequest, prefix: str) -> None:
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
        found = [FieldViolation(prefix + f, d) for f, d in violations]
        raise InvalidArgumentError("; ".join(f"{v.field}: {v.description}" for v in found), found)


def _require_actor(actor: str) -> None:
    if not actor:
        raise InvalidArgumentError.for_field("actor", "operator calls need an actor")


def _algo_code(item: _Item) -> int:
    return 0 if item.planned.limit.algorithm is Algorithm.GCRA else 1


def _script_call(items: list[_Item], cost: int) -> tuple[list[str], list[str | int]]:
    keys: list[str] = []
    args: list[str | int] = [cost, len(items)]
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
    return keys, args


def _parse_reply(items: list[_Item], reply: list[int], cost: int) -> _Outcome:
    all_ok = reply[0] == 1
    evaluations: list[Evaluation] = []
    slots: list[int] = []
    consumed = False
    for i in range(len(items)):
        ok, remaining, retry_us, used, slot = reply[2 + 5 * i : 7 + 5 * i]
        evaluations.append(Evaluation(ok == 1, int(remaining), float(retry_us), int(used)))
        slots.append(int(slot))
        consumed = consumed or (cost > 0 and all_ok and ok == 1)
    return _Outcome(
        all_ok, evaluations, [Source.REDIS] * len(items), slots, float(reply[1]), consumed
    )


def _ceil_ms(us: float) -> int:
    return 0 if us <= 0 else math.ceil(us / 1000)


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
