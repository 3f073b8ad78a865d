"""Executing planned checks: one script call per shard group, all-or-none across shards,
the local fallback when a shard is down, and the decision built from the verdicts.

A decision touching several hash tags (a tenant's own and cross-tenant ``global`` pools) is
evaluated shard by shard, tenant tag first; if a later shard denies, what the earlier ones
consumed is refunded, so the outcome is still all-or-none (concurrent checks may briefly see
the refunded units as used: this errs toward denying).

Degraded mode: a connection error or timeout on a shard trips its breaker; the failing check
and every following one for that shard are answered from in-process buckets at this
replica's share of the limit (``fallback.py``), or per the rule's ``failure_mode`` when the
rule opts out of local fallback. A check that timed out on a hung shard may still be applied
there later, so it can count both locally and in Redis: degraded mode errs toward denying,
never toward over-admitting.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

from mc_limiter.algorithms import Evaluation
from mc_limiter.decisions import UNLIMITED, CheckRequest, Decision, LimitRef, LimitResult, Source
from mc_limiter.denials import DenyAggregator
from mc_limiter.fallback import FallbackItem, LocalFallback
from mc_limiter.metrics import LimiterMetrics
from mc_limiter.options import LimiterOptions
from mc_limiter.planning import Group, Item, Resolved, algo_code
from mc_limiter.redis_client import resp_int
from mc_limiter.regions import RegionSync
from mc_limiter.rules import FailureMode, Mode
from mc_limiter.scripts import LIMIT_REPLY, REFUND_SCRIPT, CheckBatcher
from mc_limiter.sharding import SHARD_UNAVAILABLE_ERRORS, Shard, ShardRouter, trip_unless_slow
from mc_limiter.throttle import scale

# Decisions per script call in a batch: ~100 us of Redis time each at most, so a large
# CheckBatch does not hold up the shard's other clients for long.
_CALL_DECISIONS = 128


@dataclass(slots=True)
class Outcome:
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


class Executor:
    """Runs resolved checks on their shards (or the fallback) and builds the decisions.

    Owns the per-shard script-call batchers (``batcher_for``) and fallback buckets.
    ``regions`` is the number of regions (this one and its peers).
    """

    def __init__(
        self,
        options: LimiterOptions,
        router: ShardRouter,
        *,
        sync: RegionSync,
        regions: int,
        metrics: LimiterMetrics,
        denies: DenyAggregator | None,
    ) -> None:
        self._options = options
        self._router = router
        self._sync = sync
        self._regions = regions
        self.metrics = metrics
        self._denies = denies
        self._calls: dict[str, CheckBatcher] = {}
        self._fallbacks: dict[str, LocalFallback] = {}

    def batcher_for(self, shard: Shard) -> CheckBatcher:
        calls = self._calls.get(shard.name)
        if calls is None or calls.client is not shard.client:
            calls = self._calls[shard.name] = CheckBatcher(
                shard.client,
                batch_wait_us=self._options.batch_wait_us,
                decision_timeout_us=self._options.decision_timeout_us,
            )
        return calls

    def shard_recovered(self, name: str) -> None:
        """The shard answers again: its fallback buckets are dropped."""
        self._fallbacks.pop(name, None)

    async def close(self) -> None:
        for calls in self._calls.values():
            await calls.close()

    async def decide(self, resolved: Resolved, *, record: bool) -> Decision:
        cost = resolved.request.cost
        groups = resolved.groups
        parts: list[tuple[list[Item], Outcome]] = []
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
        return self.finish(resolved.request, parts, record)

    async def _run_group(self, group: Group, cost: int, consume: bool = True) -> Outcome:
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

    async def run_on_shard(self, shard: Shard, batch: list[tuple[Group, int]]) -> list[Outcome]:
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

    def _redis_outcome(self, group: Group, cost: int, reply: list[Any], at: int) -> Outcome:
        all_ok = reply[at] == 1
        consumed = cost > 0 and all_ok and 1 in reply[at + 1 : at + group.reply_len : LIMIT_REPLY]
        if consumed and group.regional:
            for item in group.items:
                if item.planned.rule.multi_region:
                    self._touch_region(item)
        return Outcome(all_ok, float(reply[0]), consumed, reply, at)

    def _fallback(self, shard: Shard, items: list[Item], cost: int) -> Outcome:
        local = self._fallbacks.setdefault(
            shard.name, LocalFallback(self._options.fallback_max_keys)
        )
        now = local.now_us()
        evaluations: list[Evaluation | None] = [None] * len(items)
        sources: list[Source] = [Source.FALLBACK] * len(items)
        local_idx: list[int] = []
        local_items: list[FallbackItem] = []
        probe_us = self._options.probe_interval_ms * 1000.0
        for i, item in enumerate(items):
            rule = item.planned.rule
            if self._options.fallback_enabled and rule.local_fallback:
                share = self._options.fallback_share / (self._regions if rule.multi_region else 1)
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
        return Outcome(all_ok, now, False, evaluations=done, sources=sources)

    async def _refund(self, parts: list[tuple[list[Item], Outcome]], cost: int) -> None:
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
                args += [algo_code(item), item.limit, item.window_us, outcome.slot(i)]
            args[1] = len(keys)
            shard = self._router.shard_for(items[0].planned.tag)
            try:
                await REFUND_SCRIPT.run(shard.client, keys, args)
            except SHARD_UNAVAILABLE_ERRORS as exc:
                trip_unless_slow(shard, exc)

    def _touch_region(self, item: Item) -> None:
        limit = item.planned.limit
        self._sync.touch(item.planned.tag, item.planned.suffix, limit.window_ms, limit.sub_windows)

    def finish(
        self,
        request: CheckRequest,
        parts: list[tuple[list[Item], Outcome]],
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
                    reset_us = reply[at + 5]
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
                            0 if reset_us <= 0 else -(-reset_us // 1000),
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
                        math.ceil(evaluation.reset_us / 1000),
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


def unmatched_decision() -> Decision:
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
