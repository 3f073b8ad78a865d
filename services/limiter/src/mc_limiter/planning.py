"""Planning a check: which limits apply to a ``(tenant, token, key)``, with which effective
numbers, on which shard, encoded how.

A plan is request-independent (the rules matching the key, their counter keys, and, when no
rule samples its enforcement per request, the throttled items and their shard groups with
the script's KEYS and ARGV encoded once), so it is cached per key and rebuilt only when the
configuration or the shard ring changes. The execution side (``execution.py``) runs plans;
nothing here talks to Redis.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mc_common.errors import FieldViolation, InvalidArgument
from mc_limiter.decisions import OVERRIDE_RULE_ID, CheckRequest
from mc_limiter.errors import CostExceedsCapacityError, NoMatchingRuleError
from mc_limiter.keys import counter_key, escape, remote_key
from mc_limiter.options import LimiterOptions, UnmatchedPolicy
from mc_limiter.redis_client import Packed
from mc_limiter.rules import MAX_LIMIT, Algorithm, Limit, Mode, Rule, Sampling, Scope
from mc_limiter.scripts import LIMIT_REPLY, CheckBatcher
from mc_limiter.sharding import Shard, ShardRouter, hash64
from mc_limiter.store import ConfigSnapshot
from mc_limiter.throttle import scale

MAX_ID_LENGTH = 256
MAX_KEY_LENGTH = 1024
FORGET_CHUNK = 2048  # cached plans looked at between yields when a change is applied


@dataclass(frozen=True, slots=True)
class Planned:
    """A limit that applies to a (tenant, token, key), independent of per-request choices."""

    rule: Rule
    limit: Limit
    tag: str
    suffix: str
    key: str
    remote_keys: tuple[str, ...]
    sample: float  # hash bucket in [0, 100) for Sampling.HASH


@dataclass(slots=True)
class Item:
    planned: Planned
    enforce: bool
    limit: int
    burst: int
    # Copied from ``planned`` for the hot path (``finish`` reads them for every check).
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
class Group:
    """The limits of one decision under one hash tag, hence on one shard, with what
    CHECK_LUA needs for them, encoded once: their KEYS, and ARGV after the cost (``n`` and
    the limits)."""

    tag: str
    shard: Shard
    calls: CheckBatcher
    items: list[Item]
    keys: Packed
    args: Packed
    reply_len: int  # values of one decision in the script's reply
    regional: bool  # some limit is multi-region: consumption is published to peers

    @classmethod
    def of(cls, tag: str, shard: Shard, calls: CheckBatcher, items: list[Item]) -> Group:
        keys: list[str] = []
        args: list[str | int] = [len(items)]
        for item in items:
            lim = item.planned.limit
            keys.append(item.planned.key)
            keys.extend(item.planned.remote_keys)
            args += [
                algo_code(item),
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
class Resolved:
    request: CheckRequest
    items: list[Item]
    groups: list[Group]  # the tenant's own tag first


@dataclass(slots=True)
class Plan:
    """What applies to one (tenant, token, key) under the current configuration. ``items``
    and ``groups`` are the request-independent resolution when no rule samples its
    enforcement per request; ``max_cost`` is the largest cost every enforced limit admits."""

    planned: tuple[Planned, ...]
    items: list[Item] | None = None
    groups: list[Group] | None = None
    max_cost: int = MAX_LIMIT


class Planner:
    """Resolves checks against the current configuration snapshot, with a bounded LRU of
    plans per ``(tenant, token, key)``.

    ``batcher_for(shard)`` gives the script-call batcher a group is sent through;
    ``peer_names()`` the other regions (remote usage keys of multi-region limits).
    """

    def __init__(
        self,
        options: LimiterOptions,
        router: ShardRouter,
        *,
        batcher_for: Callable[[Shard], CheckBatcher],
        peer_names: Callable[[], Sequence[str]],
        rng: random.Random,
    ) -> None:
        self._options = options
        self._router = router
        self._batcher_for = batcher_for
        self._peer_names = peer_names
        self._rng = rng
        self._snapshot = ConfigSnapshot()
        self._plans: OrderedDict[tuple[str, str, str], Plan] = OrderedDict()
        self._override_plans: OrderedDict[tuple[str, str, Limit], Plan] = OrderedDict()
        self._plans_ring = router.generation

    @property
    def snapshot(self) -> ConfigSnapshot:
        return self._snapshot

    def apply(self, snapshot: ConfigSnapshot) -> None:
        """Plan from ``snapshot`` from now on (a full reload: every cached plan goes)."""
        self._snapshot = snapshot
        self._plans.clear()
        self._override_plans.clear()

    def invalidate(self) -> None:
        """Forget every cached plan (shards or the global shadow switch changed)."""
        self._plans.clear()
        self._override_plans.clear()

    async def forget(self, affected: Callable[[str, str, str], bool]) -> None:
        """Forget the cached plans of the ``(tenant, token, key)`` that ``affected`` names,
        ``FORGET_CHUNK`` at a time with a yield to the event loop in between. Plans made
        meanwhile already see the change (the snapshot was changed first)."""
        plans = self._plans
        keys = list(plans)
        for at in range(0, len(keys), FORGET_CHUNK):
            for cache_key in keys[at : at + FORGET_CHUNK]:
                if cache_key in plans and affected(*cache_key):
                    del plans[cache_key]
            if at + FORGET_CHUNK < len(keys):
                await asyncio.sleep(0)

    def cached(self, tenant: str, token: str, key: str) -> Plan | None:
        """The cached plan of a key, if any (for tests and diagnostics; no LRU touch)."""
        return self._plans.get((tenant, token, key))

    def resolve(self, request: CheckRequest, unmatched: UnmatchedPolicy) -> Resolved:
        if request.override is None:
            plan = self.plan(request.tenant, request.token, request.key)
        else:
            plan = self.override_plan(request.tenant, request.key, request.override)
        if plan.groups is not None and plan.items is not None:
            if request.cost > plan.max_cost:
                check_capacity(plan.items, request.cost)
            return Resolved(request, plan.items, plan.groups)
        if not plan.planned:
            if unmatched is UnmatchedPolicy.ERROR:
                raise NoMatchingRuleError(request.tenant, request.token, request.key)
            return Resolved(request, [], [])
        items = self._items(request.tenant, plan.planned)
        check_capacity(items, request.cost)
        return Resolved(request, items, self._groups(items))

    def plan(self, tenant: str, token: str, key: str) -> Plan:
        if self._plans_ring != self._router.generation:
            self._plans.clear()  # shards changed: cached groups may name the wrong one
            self._plans_ring = self._router.generation
        cache_key = (tenant, token, key)
        cached = self._plans.get(cache_key)
        if cached is not None:
            self._plans.move_to_end(cache_key)
            return cached
        planned: list[Planned] = []
        rules = self._snapshot.rules_for(tenant, token, key)
        for rule in rules:
            planned += self._planned(rule, tenant, token, key)
        plan = Plan(tuple(planned))
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
        if len(self._plans) > self._options.plan_cache_size:
            self._plans.popitem(last=False)
        return plan

    def _planned(self, rule: Rule, tenant: str, token: str, key: str) -> list[Planned]:
        """The counters of ``rule``'s limits for this check."""
        prefix = self._options.key_prefix
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
        out = []
        for limit in rule.limits:
            shape = (
                f"g{limit.window_ms}"
                if limit.algorithm is Algorithm.GCRA
                else f"s{limit.window_ms}x{limit.sub_windows}"
            )
            suffix = f"{escape(rule.id)}:{escape(limit.name)}:{shape}:{rule.scope}:{subject}"
            remotes = (
                tuple(remote_key(prefix, tag, suffix, peer) for peer in self._peer_names())
                if rule.multi_region
                else ()
            )
            out.append(
                Planned(rule, limit, tag, suffix, counter_key(prefix, tag, suffix), remotes, sample)
            )
        return out

    def override_plan(self, tenant: str, key: str, limit: Limit) -> Plan:
        """The plan of a check that carries its own limit (Envoy's per-descriptor override):
        that limit alone, per (tenant, key), under ``OVERRIDE_RULE_ID``; cached like rules."""
        if self._plans_ring != self._router.generation:
            self._plans.clear()
            self._override_plans.clear()
            self._plans_ring = self._router.generation
        cache_key = (tenant, key, limit)
        cached = self._override_plans.get(cache_key)
        if cached is not None:
            self._override_plans.move_to_end(cache_key)
            return cached
        rule = Rule(id=OVERRIDE_RULE_ID, scope=Scope.KEY, limits=[limit])
        plan = Plan(tuple(self._planned(rule, tenant, "", key)))
        plan.items = self._items(tenant, plan.planned)
        plan.groups = self._groups(plan.items)
        plan.max_cost = min((i.burst for i in plan.items if i.enforce), default=MAX_LIMIT)
        self._override_plans[cache_key] = plan
        if len(self._override_plans) > self._options.plan_cache_size:
            self._override_plans.popitem(last=False)
        return plan

    def _items(self, tenant: str, planned: tuple[Planned, ...]) -> list[Item]:
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
            limit = p.limit
            if p.rule.scope is Scope.GLOBAL and limit.algorithm is Algorithm.GCRA:
                # A shared pool: the throttled tenant sees it full sooner (a smaller
                # tolerance), but each unit it takes costs the pool one unit (the emission
                # interval stays the pool's), so its throttle never costs other tenants.
                items.append(Item(p, enforce, limit.limit, scale(limit.capacity, factor)))
            else:
                items.append(
                    Item(p, enforce, scale(limit.limit, factor), scale(limit.capacity, factor))
                )
        return items

    def _groups(self, items: list[Item]) -> list[Group]:
        by_tag: dict[str, list[Item]] = {}
        for item in items:
            by_tag.setdefault(item.planned.tag, []).append(item)
        groups = []
        for tag in sorted(by_tag, key=lambda t: (not t.startswith("t:"), t)):
            shard = self._router.shard_for(tag)
            groups.append(Group.of(tag, shard, self._batcher_for(shard), by_tag[tag]))
        return groups

    def _enforced(self, p: Planned, global_shadow: bool) -> bool:
        rule = p.rule
        if global_shadow or rule.mode is Mode.SHADOW:
            return False
        if rule.enforce_percent >= 100.0:
            return True
        if rule.enforce_sampling is Sampling.HASH:
            return p.sample < rule.enforce_percent
        return self._rng.random() * 100.0 < rule.enforce_percent


def validate(request: CheckRequest, index: int | None = None) -> None:
    """Raise ``InvalidArgument`` naming each bad field of ``request`` (``requests[i].``
    prefixed in a batch)."""
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
        raise InvalidArgument("; ".join(f"{v.field}: {v.description}" for v in found), found)


def algo_code(item: Item) -> int:
    return 0 if item.planned.limit.algorithm is Algorithm.GCRA else 1


def check_capacity(items: list[Item], cost: int) -> None:
    for item in items:
        if item.enforce and cost > item.burst:
            lim = item.planned.limit
            raise CostExceedsCapacityError(item.planned.rule.id, lim.name, cost, item.burst)
