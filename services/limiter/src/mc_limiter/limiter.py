"""The limiter facade: checks, usage reads and operator calls, over sharded Redis.

A check resolves the rules matching ``(tenant, token, key)`` from an in-memory config snapshot
(refreshed from Redis when its version changes), applies the tenant's throttle factor, the
global shadow switch and each rule's mode / ``enforce_percent``, and then evaluates every
limit in one Lua call on the shard owning the tenant's hash tag: all limits consumed or none.

The work is split along its three jobs: ``planning.py`` (which limits apply, on which shard,
encoded how), ``execution.py`` (script calls, cross-shard refunds, the local fallback, the
decision) and ``admin.py`` (rules, throttles and the shadow switch, audited). This module
wires them, owns the lifecycle (scripts, breakers, background loops) and validates input.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from mc_common.errors import MCError, Unavailable
from mc_common.pagetokens import PageTokens
from mc_common.periodic import Periodic
from mc_limiter.admin import Administration, DomainPlan, RulePage
from mc_limiter.audit import AuditEvent, AuditSink, NullAuditSink
from mc_limiter.config_cache import ConfigCache
from mc_limiter.decisions import CheckRequest, Decision
from mc_limiter.denials import DenyAggregator, DenySink
from mc_limiter.envoy_config import DomainConfig
from mc_limiter.execution import Executor, unmatched_decision
from mc_limiter.keys import escape
from mc_limiter.metrics import LimiterMetrics
from mc_limiter.options import LimiterOptions, UnmatchedPolicy
from mc_limiter.planning import (
    MAX_ID_LENGTH,
    MAX_KEY_LENGTH,
    Group,
    Planner,
    Resolved,
    validate,
)
from mc_limiter.regions import RegionPeer, RegionSync
from mc_limiter.rules import Rule, StoredRule
from mc_limiter.scripts import CHECK_SCRIPT, REFUND_SCRIPT
from mc_limiter.sharding import SHARD_UNAVAILABLE_ERRORS, CircuitBreaker, Shard, ShardRouter
from mc_limiter.store import RuleStore
from mc_limiter.throttle import ThrottleLevel

_RESOLVE_SLICE = 128  # check_each yields to the event loop after resolving this many

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_KEY_LENGTH",
    "Limiter",
    "LimiterOptions",
    "UnmatchedPolicy",
]


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
        page_tokens: PageTokens | None = None,
    ) -> None:
        self.options = options or LimiterOptions()
        self.router = ShardRouter(shards, vnodes=self.options.vnodes)
        self.metrics = metrics or LimiterMetrics()
        self._check_seconds = {
            path: self.metrics.check_seconds.labels(path) for path in ("redis", "fallback", "batch")
        }
        self._denies = DenyAggregator(deny_sink, self.options.deny_flush_ms) if deny_sink else None
        peers = list(peers)
        self._sync = RegionSync(
            self.options.region,
            self.router,
            self.options.key_prefix,
            peers,
            self.options.region_sync_ms,
        )
        self.executor = Executor(
            self.options,
            self.router,
            sync=self._sync,
            regions=1 + len(peers),
            metrics=self.metrics,
            denies=self._denies,
        )
        self.planner = Planner(
            self.options,
            self.router,
            batcher_for=self.executor.batcher_for,
            peer_names=lambda: self._sync.peer_names,
            rng=rng or random.Random(),
        )
        snapshot_path = self.options.config_snapshot_path
        self.admin = Administration(
            RuleStore(config or self.router.shards[0].client, self.options.key_prefix),
            self.planner,
            audit_sink or NullAuditSink(),
            page_tokens,
            cache=ConfigCache(snapshot_path) if snapshot_path else None,
            on_stale=lambda stale: self.metrics.config_stale.set(1 if stale else 0),
        )
        self._refresh = Periodic(
            "limiter-config", self.options.config_refresh_ms / 1000, self.admin.refresh_once
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
        timeout_s = max(1.0, options.socket_timeout_ms / 1000)
        config = (
            Redis.from_url(config_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
            if config_url
            else None
        )
        limiter = cls(shards, config=config, **kwargs)
        limiter._owned_clients = [s.client for s in shards] + ([config] if config else [])
        return limiter

    @property
    def store(self) -> RuleStore:
        return self.admin.store

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load scripts and configuration, start background loops. With the config store
        unreachable it starts anyway, degraded: from the last good configuration saved at
        ``options.config_snapshot_path`` (or with no rules), reloading once the store answers
        (``admin.stale`` tells); it never fails because a Redis is down."""
        for shard in self.router.shards:
            await self._load_scripts(shard)
        try:
            await self.reload()
        except Unavailable:
            await self.admin.start_degraded()
        self._refresh.start()
        self._sync.start()
        if self._denies:
            self._denies.start()

    async def close(self) -> None:
        await self._refresh.stop()
        await self.admin.close()
        await self._sync.close()
        if self._denies:
            await self._denies.close()
        for shard in self.router.shards:
            if shard.breaker:
                await shard.breaker.close()
        await self.executor.close()
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
        self.planner.invalidate()

    def shard_for(self, tenant: str) -> Shard:
        """The shard holding ``tenant``'s counters (global pools live elsewhere)."""
        return self.router.shard_for(f"t:{escape(tenant)}")

    async def reload(self) -> None:
        await self.admin.reload()

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
        current usage, and consumes nothing. Raises ``InvalidArgument`` (empty tenant,
        negative cost), ``NoMatchingRuleError`` (no rule matches and unmatched=error) or
        ``CostExceedsCapacityError`` (cost above an enforced limit's capacity). A shard outage
        never raises: the decision then comes from the fallback. ``unmatched_allow``
        overrides ``options.unmatched`` for this call (Envoy RLS admits unmatched
        descriptors).
        """
        request = CheckRequest(tenant, token, key, cost)
        validate(request)
        unmatched = self._unmatched(unmatched_allow)
        return await self._check_one(request, record=cost > 0, unmatched=unmatched)

    async def usage(self, tenant: str, token: str, key: str) -> Decision:
        """Current usage of every limit that applies, without consuming (a peek that returns
        an empty decision instead of raising when no rule matches); for policy input."""
        request = CheckRequest(tenant, token, key, 0)
        validate(request)
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
            validate(request, i)
        unmatched = self._unmatched(unmatched_allow)
        resolved = []
        for i, request in enumerate(requests):
            try:
                resolved.append(self.planner.resolve(request, unmatched))
            except MCError as exc:
                exc.request_index = i
                raise
        return await self._evaluate(resolved)

    async def check_each(
        self, requests: Sequence[CheckRequest], *, unmatched_allow: bool | None = None
    ) -> list[Decision | MCError]:
        """Like ``check_batch``, but each request stands alone: one that is invalid or can
        never be admitted (``CostExceedsCapacityError``) gets its error in its place and
        consumes nothing, while the others are decided. Linear in the requests (Envoy's RLS
        decides every descriptor on its own this way)."""
        unmatched = self._unmatched(unmatched_allow)
        out: list[Decision | MCError | None] = [None] * len(requests)
        resolved: list[Resolved] = []
        at: list[int] = []
        for i, request in enumerate(requests):
            if i and not i % _RESOLVE_SLICE:
                await asyncio.sleep(0)  # planning new keys costs: let other calls in between
            try:
                validate(request)
                resolved.append(self.planner.resolve(request, unmatched))
            except MCError as exc:
                exc.request_index = i
                out[i] = exc
            else:
                at.append(i)
        for i, decision in zip(at, await self._evaluate(resolved), strict=True):
            out[i] = decision
        return [d if d is not None else unmatched_decision() for d in out]

    async def _evaluate(self, resolved: list[Resolved]) -> list[Decision]:
        """Decide resolved checks: single-shard ones in one pipelined call per shard."""
        started = time.perf_counter()
        executor = self.executor
        decisions: list[Decision | None] = [None] * len(resolved)
        single: dict[str, list[tuple[int, Group]]] = {}
        multi: list[int] = []
        for i, res in enumerate(resolved):
            if not res.items:
                decisions[i] = unmatched_decision()
            elif len(res.groups) == 1:
                group = res.groups[0]
                single.setdefault(group.shard.name, []).append((i, group))
            else:
                multi.append(i)

        async def run_shard(batch: list[tuple[int, Group]]) -> None:
            outcomes = await executor.run_on_shard(
                batch[0][1].shard, [(group, resolved[i].request.cost) for i, group in batch]
            )
            for (i, group), outcome in zip(batch, outcomes, strict=True):
                request = resolved[i].request
                decisions[i] = executor.finish(request, [(group.items, outcome)], request.cost > 0)

        async def run_multi(i: int) -> None:
            decisions[i] = await executor.decide(resolved[i], record=resolved[i].request.cost > 0)

        jobs = [*(run_shard(batch) for batch in single.values()), *map(run_multi, multi)]
        if len(jobs) == 1:
            await jobs[0]
        elif jobs:
            await asyncio.gather(*jobs)
        out = [d if d is not None else unmatched_decision() for d in decisions]
        self._check_seconds["batch"].observe(time.perf_counter() - started)
        return out

    def _unmatched(self, allow: bool | None) -> UnmatchedPolicy:
        if allow is None:
            return self.options.unmatched
        return UnmatchedPolicy.ALLOW if allow else UnmatchedPolicy.ERROR

    async def _check_one(
        self, request: CheckRequest, *, record: bool, unmatched: UnmatchedPolicy
    ) -> Decision:
        started = time.perf_counter()
        resolved = self.planner.resolve(request, unmatched)
        if not resolved.items:
            return unmatched_decision()
        decision = await self.executor.decide(resolved, record=record)
        path = "fallback" if decision.degraded else "redis"
        self._check_seconds[path].observe(time.perf_counter() - started)
        return decision

    # ---------------------------------------------------------------- administration
    # (see admin.py; these delegate so callers need one object)

    async def put_rule(
        self,
        rule: Rule | Mapping[str, Any],
        *,
        actor: str,
        expected_revision: int | None = None,
        reason: str = "",
    ) -> StoredRule:
        """Create or replace a rule (validated; ``expected_revision`` 0 = must not exist)."""
        return await self.admin.put_rule(
            rule, actor=actor, expected_revision=expected_revision, reason=reason
        )

    async def get_rule(self, rule_id: str) -> StoredRule:
        return await self.admin.get_rule(rule_id)

    async def list_rules(
        self, tenant: str | None = None, *, page_size: int = 0, page_token: str = ""
    ) -> RulePage:
        """A page of the rules (or of those that can apply to ``tenant``), in id order."""
        return await self.admin.list_rules(tenant, page_size=page_size, page_token=page_token)

    async def delete_rule(
        self, rule_id: str, *, actor: str, expected_revision: int | None = None, reason: str = ""
    ) -> None:
        await self.admin.delete_rule(
            rule_id, actor=actor, expected_revision=expected_revision, reason=reason
        )

    async def set_throttle(
        self, tenant: str, level: ThrottleLevel | str, *, actor: str, reason: str = ""
    ) -> AuditEvent:
        """Set a tenant's throttle level; returns (and emits) the audit record."""
        return await self.admin.set_throttle(tenant, level, actor=actor, reason=reason)

    async def put_domain(
        self,
        source: str,
        *,
        file_name: str,
        actor: str,
        dry_run: bool = False,
        expected_revision: int | None = None,
        reason: str = "",
    ) -> DomainPlan:
        """Store (or with ``dry_run`` only diff) a declarative rules file (``envoy_config``)."""
        return await self.admin.put_domain(
            source,
            file_name=file_name,
            actor=actor,
            dry_run=dry_run,
            expected_revision=expected_revision,
            reason=reason,
        )

    def declarative(self, domain: str) -> DomainConfig | None:
        """The declarative configuration of an Envoy domain, if one is stored."""
        stored = self.planner.snapshot.domains.get(domain)
        return stored.config if stored else None

    def throttle_level(self, tenant: str) -> ThrottleLevel:
        return self.planner.snapshot.throttles.get(tenant, ThrottleLevel.NONE)

    async def set_global_shadow(self, enabled: bool, *, actor: str, reason: str = "") -> AuditEvent:
        """Switch every rule to shadow mode (counts, never denies) or back."""
        return await self.admin.set_global_shadow(enabled, actor=actor, reason=reason)

    @property
    def global_shadow(self) -> bool:
        return self.planner.snapshot.global_shadow

    # ---------------------------------------------------------------- shards

    def _attach_breaker(self, shard: Shard) -> None:
        def on_change(up: bool) -> None:
            self.metrics.degraded.labels(shard.name).set(0 if up else 1)
            if not up:
                self.metrics.breaker_trips.labels(shard.name).inc()
            if up:
                self.executor.shard_recovered(shard.name)

        shard.breaker = CircuitBreaker(
            shard.name, shard.client, self.options.probe_interval_ms, on_change
        )
        self.metrics.degraded.labels(shard.name).set(0)
        self.metrics.breaker_trips.labels(shard.name)

    async def _load_scripts(self, shard: Shard) -> None:
        try:
            await CHECK_SCRIPT.load(shard.client)
            await REFUND_SCRIPT.load(shard.client)
        except SHARD_UNAVAILABLE_ERRORS as exc:
            shard.trip(exc)
