"""Administration of the limiter's configuration: rules, throttle levels and the global
shadow switch, each write audited, and the configuration snapshot kept current.

Writes go to the config store (``store.py``); every write bumps its version and records
what it changed. This replica applies the change at once (before the call returns) and the
others on their next refresh, each by replaying only the changes since its own version and
forgetting only the cached plans they affect (docs/adr/0016-incremental-rule-writes.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import InvalidArgument, NotFound, Unavailable
from mc_common.pagetokens import PageTokens
from mc_limiter.audit import AuditEvent, AuditSink
from mc_limiter.config_cache import ConfigCache
from mc_limiter.envoy_config import (
    RULE_ID_PREFIX,
    UNITS_MS,
    DomainConfig,
    Node,
    is_declarative,
    load_config,
)
from mc_limiter.planning import Planner
from mc_limiter.rules import Matcher, Rule, StoredRule, parse_rule
from mc_limiter.sharding import SHARD_UNAVAILABLE_ERRORS
from mc_limiter.store import Change, ChangeKind, ConfigSnapshot, RuleStore, StoredDomain
from mc_limiter.throttle import ThrottleLevel

log = logging.getLogger(__name__)

_T = TypeVar("_T")
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
MAX_PAGE_SCAN = 10_000  # rules one page may look at (wildcard-tenant rules not matching)
MAX_AUDITED_CHANGES = 200  # node changes an audit event lists
MAX_TARGETED_CHANGES = 64  # beyond this many changes at once, forget every cached plan
_REFRESH_ERRORS: tuple[type[BaseException], ...] = (Unavailable, *SHARD_UNAVAILABLE_ERRORS)


@dataclass(frozen=True, slots=True)
class RulePage:
    rules: list[StoredRule]
    next_page_token: str  # "" at the end


class Administration:
    """Operator calls on the configuration in ``store``; ``planner`` plans from the snapshot
    this loads. Every write needs an ``actor`` and emits an ``AuditEvent`` to ``audit``."""

    def __init__(
        self,
        store: RuleStore,
        planner: Planner,
        audit: AuditSink,
        page_tokens: PageTokens | None = None,
        cache: ConfigCache | None = None,
        on_stale: Callable[[bool], None] | None = None,
    ) -> None:
        self.store = store
        self._tokens = page_tokens
        self._planner = planner
        self._audit = audit
        self._lock = asyncio.Lock()  # one catch-up (or reload) at a time
        self._cache = cache
        self._saving: asyncio.Task[None] | None = None
        self._on_stale = on_stale
        # True while the configuration did not come from the store (degraded start).
        self.stale = False

    async def reload(self) -> None:
        """Load the whole configuration now (start-up, or a replica too far behind).
        Raises ``Unavailable`` if the store is unreachable."""
        async with self._lock:
            await self._reload_locked()

    async def _reload_locked(self) -> None:
        try:
            snapshot = await self.store.load()
        except SHARD_UNAVAILABLE_ERRORS as exc:
            raise Unavailable(
                f"limiter config store unreachable: {exc!r}",
                reason=ErrorReason.ERROR_REASON_LIMITER_STORE_UNAVAILABLE,
            ) from exc
        self._planner.apply(snapshot)
        self._set_stale(False)
        self._save_soon()
        if self._tokens is None:  # made with the configuration, not by the first ListRules:
            # a rejected call must change nothing in the store (the fleet fuzz suite checks)
            self._tokens = PageTokens([await _admin(self.store.page_token_key())])

    async def start_degraded(self) -> None:
        """Serve the last good configuration saved by ``cache`` (or none) until the store
        answers: ``stale`` stays set, and the next refresh that reaches the store reloads."""
        snapshot = await self._cache.load() if self._cache is not None else None
        if snapshot is not None:
            self._planner.apply(snapshot)
        log.error(
            "limiter config store unreachable at start-up: serving %s until it answers",
            f"the saved configuration (version {snapshot.version}, {len(snapshot.rules)} rules)"
            if snapshot is not None
            else "no rules (no saved configuration)",
        )
        self._set_stale(True)

    def _set_stale(self, stale: bool) -> None:
        self.stale = stale
        if self._on_stale is not None:
            self._on_stale(stale)

    def _save_soon(self) -> None:
        """Save the configuration in the background (at most one save at a time; a save
        starting later sees the newest configuration)."""
        if self._cache is None or (self._saving is not None and not self._saving.done()):
            return
        self._saving = asyncio.get_running_loop().create_task(self._save())

    async def _save(self) -> None:
        assert self._cache is not None
        saved = -1
        while saved != self._planner.snapshot.version:
            saved = self._planner.snapshot.version
            await self._cache.save(self._planner.snapshot)

    async def close(self) -> None:
        """Finish a save in progress."""
        if self._saving is not None:
            await asyncio.gather(self._saving, return_exceptions=True)

    async def refresh_once(self) -> None:
        """Catch up with the store (the periodic refresh of every replica)."""
        try:
            await self.catch_up()
        except _REFRESH_ERRORS:
            log.debug("config refresh skipped: store unreachable")

    async def catch_up(self) -> None:
        """Apply the writes made since this replica's version, one change at a time, and
        forget only the cached plans they affect; load everything only when the changelog no
        longer reaches back to our version. Raises ``Unavailable``."""
        if self.stale:
            await self.reload()  # serving a saved configuration: the store's replaces it
            return
        forgets = []
        try:
            async with self._lock:
                while True:
                    snapshot = self._planner.snapshot
                    changes = await self.store.changes_since(snapshot.version)
                    if changes is None:
                        await self._reload_locked()
                        return
                    if not changes:
                        break
                    forgets.append(self._apply(snapshot, changes))
                    await asyncio.sleep(0)  # between batches of changes
        except SHARD_UNAVAILABLE_ERRORS as exc:
            raise Unavailable(
                f"limiter config store unreachable: {exc!r}",
                reason=ErrorReason.ERROR_REASON_LIMITER_STORE_UNAVAILABLE,
            ) from exc
        if forgets:
            self._save_soon()
        for forget in forgets:
            await forget

    def _apply_own(
        self, version: int, rule_id: str, stored: StoredRule | None
    ) -> Awaitable[None] | None:
        """Apply this replica's own rule write at once when it directly follows our
        snapshot (the common case), without reading it back; returns the plan invalidation
        to await, or ``None`` when the write must be caught up with from the changelog."""
        snapshot = self._planner.snapshot
        if version != snapshot.version + 1 or self._lock.locked():
            return None
        return self._apply(snapshot, [Change(version, ChangeKind.RULE, rule_id, stored)])

    async def _settle(self, applied: Awaitable[None] | None) -> None:
        if applied is not None:
            await applied
        else:
            await self._catch_up_quietly()

    def _apply(self, snapshot: ConfigSnapshot, changes: list[Change]) -> Awaitable[None]:
        """Change ``snapshot`` in place (synchronously: checks see all of a change or none of
        it); returns the job that forgets the cached plans the changes affect."""
        matchers: list[Matcher] = []
        tenants: set[str] = set()
        everything = False
        for change in changes:
            if change.kind is ChangeKind.RULE:
                if isinstance(change.value, StoredRule):
                    before = snapshot.put(change.value)
                    matchers.append(change.value.rule.match)
                else:
                    before = snapshot.delete(change.subject)
                if before is not None:
                    matchers.append(before.rule.match)
            elif change.kind is ChangeKind.DOMAIN:
                domain = change.value if isinstance(change.value, StoredDomain) else None
                matchers.extend(s.rule.match for s in snapshot.set_domain(change.subject, domain))
            elif change.kind is ChangeKind.THROTTLE:
                assert isinstance(change.value, ThrottleLevel)
                snapshot.set_throttle(change.subject, change.value)
                tenants.add(change.subject)
            else:
                snapshot.global_shadow = bool(change.value)
                everything = True
            snapshot.version = change.version
        if everything or len(matchers) + len(tenants) > MAX_TARGETED_CHANGES:
            self._planner.invalidate()
            return asyncio.sleep(0)
        return self._planner.forget(_affected(matchers, tenants))

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
        _not_declarative(parsed.id)
        before = self._planner.snapshot.rules.get(parsed.id)
        stored = await _admin(self.store.put_rule(parsed, actor, expected_revision))
        applied = self._apply_own(self.store.last_version, parsed.id, stored)
        await self._audit_event(
            "limiter.rule.put",
            actor,
            parsed.id,
            before.rule.model_dump(mode="json") if before else None,
            parsed.model_dump(mode="json"),
            reason,
        )
        await self._settle(applied)
        return stored

    async def get_rule(self, rule_id: str) -> StoredRule:
        return await _admin(self.store.get_rule(rule_id))

    async def list_rules(
        self, tenant: str | None = None, *, page_size: int = 0, page_token: str = ""
    ) -> RulePage:
        """A page of the rules (or of those that can apply to ``tenant``: its literal rules
        and the wildcards matching it) in id order, from this replica's snapshot once it has
        caught up. ``page_size`` 0 means ``DEFAULT_PAGE_SIZE``; at most ``MAX_PAGE_SIZE``.
        A page looks at no more than ``MAX_PAGE_SCAN`` rules, so it may come back short
        with a ``next_page_token``: keep paging until the token is empty."""
        if page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        tokens = await self._page_tokens()
        binding: dict[str, Any] = {
            "tenant": "",
            "listing": "limiter.rules",
            "filters": {"tenant": tenant or ""},
        }
        position = tokens.open(page_token, **binding)
        after = position[0] if position and isinstance(position[0], str) else ""
        await self._catch_up_quietly()
        rules, last = self._planner.snapshot.page(tenant, after, size, MAX_PAGE_SCAN)
        token = tokens.issue([last], **binding) if last is not None else ""
        return RulePage(rules, token)

    async def _page_tokens(self) -> PageTokens:
        """``mc_common`` page tokens with the configured keys, else with a key the replicas
        share through the config store (made once, on first use)."""
        if self._tokens is None:
            key = await _admin(self.store.page_token_key())
            self._tokens = PageTokens([key])
        return self._tokens

    async def delete_rule(
        self, rule_id: str, *, actor: str, expected_revision: int | None = None, reason: str = ""
    ) -> None:
        _require_actor(actor)
        _not_declarative(rule_id)
        before = self._planner.snapshot.rules.get(rule_id)
        await _admin(self.store.delete_rule(rule_id, expected_revision))
        applied = self._apply_own(self.store.last_version, rule_id, None)
        await self._audit_event(
            "limiter.rule.delete",
            actor,
            rule_id,
            before.rule.model_dump(mode="json") if before else None,
            None,
            reason,
        )
        await self._settle(applied)

    # ------------------------------------------------------------ declarative domains

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
        """Validate a rules file (``envoy_config``; ``ConfigError`` names file, line and
        reason) and, unless ``dry_run``, store it as its domain's whole configuration.
        Returns what changes against the stored domain, node by node."""
        _require_actor(actor)
        # Parsed in a thread: a file of up to 1 MiB must not hold the event loop.
        config = await asyncio.to_thread(load_config, source, file_name)
        await self._catch_up_quietly()
        before = self._planner.snapshot.domains.get(config.domain)
        plan = DomainPlan(
            config.domain,
            before.revision if before else 0,
            diff_domains(before.config if before else None, config),
            config.rules(),
        )
        if dry_run:
            return plan
        stored = await _admin(self.store.put_domain(config, actor, expected_revision))
        await self._audit_event(
            "limiter.domain.put",
            actor,
            config.domain,
            _domain_summary(before) if before else None,
            {**_domain_summary(stored), "changes": plan.changes[:MAX_AUDITED_CHANGES]},
            reason,
        )
        await self._catch_up_quietly()
        return replace(plan, revision=stored.revision)

    async def get_domain(self, name: str) -> StoredDomain:
        stored = await _admin(self.store.get_domain(name))
        if stored is None:
            raise NotFound(
                f"no declarative domain {name!r}",
                reason=ErrorReason.ERROR_REASON_RULES_DOMAIN_NOT_FOUND,
            )
        return stored

    async def list_domains(self) -> list[StoredDomain]:
        await self._catch_up_quietly()
        domains = self._planner.snapshot.domains
        return [domains[name] for name in sorted(domains)]

    async def delete_domain(self, name: str, *, actor: str, reason: str = "") -> None:
        _require_actor(actor)
        before = self._planner.snapshot.domains.get(name)
        if not await _admin(self.store.delete_domain(name)):
            raise NotFound(
                f"no declarative domain {name!r}",
                reason=ErrorReason.ERROR_REASON_RULES_DOMAIN_NOT_FOUND,
            )
        await self._audit_event(
            "limiter.domain.delete",
            actor,
            name,
            _domain_summary(before) if before else None,
            None,
            reason,
        )
        await self._catch_up_quietly()

    async def set_throttle(
        self, tenant: str, level: ThrottleLevel | str, *, actor: str, reason: str = ""
    ) -> AuditEvent:
        """Set a tenant's throttle level; returns (and emits) the audit record."""
        _require_actor(actor)
        if not tenant:
            raise InvalidArgument.field("tenant", "must not be empty")
        try:
            new_level = ThrottleLevel(level)
        except ValueError:
            allowed = ", ".join(lv.value for lv in ThrottleLevel)
            raise InvalidArgument.field("level", f"must be one of {allowed}") from None
        previous = await _admin(self.store.set_throttle(tenant, new_level))
        event = await self._audit_event(
            "limiter.throttle.set", actor, tenant, previous.value, new_level.value, reason, tenant
        )
        await self._catch_up_quietly()
        return event

    async def set_global_shadow(self, enabled: bool, *, actor: str, reason: str = "") -> AuditEvent:
        """Switch every rule to shadow mode (counts, never denies) or back."""
        _require_actor(actor)
        previous = await _admin(self.store.set_global_shadow(enabled))
        event = await self._audit_event(
            "limiter.shadow.global", actor, "global", previous, enabled, reason
        )
        await self._catch_up_quietly()
        return event

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

    async def _catch_up_quietly(self) -> None:
        try:
            await self.catch_up()
        except Unavailable:
            log.warning("config refresh failed; keeping version %s", self._planner.snapshot.version)


async def _admin(call: Awaitable[_T]) -> _T:
    try:
        return await call
    except SHARD_UNAVAILABLE_ERRORS as exc:
        raise Unavailable(
            f"limiter config store unreachable: {exc!r}",
            reason=ErrorReason.ERROR_REASON_LIMITER_STORE_UNAVAILABLE,
        ) from exc


def _affected(matchers: list[Matcher], tenants: set[str]) -> Callable[[str, str, str], bool]:
    tests = [m.predicate() for m in matchers]

    def affected(tenant: str, token: str, key: str) -> bool:
        return tenant in tenants or any(test(tenant, token, key) for test in tests)

    return affected


@dataclass(frozen=True, slots=True)
class DomainPlan:
    """What storing a rules file changes: ``changes`` lines (``+``, ``-``, ``~``), the rules
    its nodes become, and the domain's revision (the stored one on a dry run)."""

    domain: str
    revision: int
    changes: list[str]
    rules: list[Rule]


def diff_domains(before: DomainConfig | None, after: DomainConfig) -> list[str]:
    """Node by node: ``+ path: limit`` added, ``- path`` removed, ``~ path: old -> new``."""
    old = {n.path: n for n in (_all_nodes(before.root) if before else [])}
    new = {n.path: n for n in _all_nodes(after.root)}
    out = []
    for path, node in new.items():
        was = old.get(path)
        if was is None:
            out.append(f"+ {_path_text(path)}: {_node_text(node)}")
        elif _node_text(was) != _node_text(node):
            out.append(f"~ {_path_text(path)}: {_node_text(was)} -> {_node_text(node)}")
    out += [f"- {_path_text(path)}" for path in old if path not in new]
    return out


def _all_nodes(root: Node) -> list[Node]:
    out: list[Node] = []
    stack = list(root.children)
    while stack:
        node = stack.pop(0)
        out.append(node)
        stack[0:0] = list(node.children)
    return out


def _path_text(path: tuple[tuple[str, str], ...]) -> str:
    return " > ".join(f"{k}={v}" if v else k for k, v in path)


def _node_text(node: Node) -> str:
    rl = node.rate_limit
    flags = " shadow" if node.shadow_mode else ""
    flags += " shared" if node.share_threshold else ""
    if rl is None:
        return "no limit" + flags
    if rl.unlimited:
        return "unlimited" + flags
    unit = next((u for u, ms in UNITS_MS.items() if ms == rl.window_ms), f"{rl.window_ms}ms")
    text = f"{rl.requests_per_unit}/{unit}"
    if rl.name:
        text += f" name={rl.name}"
    if rl.replaces:
        text += f" replaces={','.join(rl.replaces)}"
    text += f" {rl.algorithm.value}"
    if rl.algorithm.value == "sliding_window" and rl.sub_windows != 1:
        text += f"x{rl.sub_windows}"
    if rl.burst:
        text += f" burst={rl.burst}"
    if rl.multi_region:
        text += " multi-region"
    if rl.failure_mode.value != "fail_open" or not rl.local_fallback:
        text += f" {rl.failure_mode.value}{'' if rl.local_fallback else ' no-fallback'}"
    return text + flags


def _domain_summary(stored: StoredDomain) -> dict[str, Any]:
    """What the audit trail records of a rules file: not the file itself (up to 1 MiB), but
    where it came from, its revision and its digest."""
    source = stored.config.source.encode("utf-8", "surrogatepass")
    return {
        "file": stored.config.file_name,
        "revision": stored.revision,
        "sha256": hashlib.sha256(source).hexdigest(),
    }


def _not_declarative(rule_id: str) -> None:
    if is_declarative(rule_id):
        raise InvalidArgument.field(
            "rule_id",
            f"ids starting with {RULE_ID_PREFIX!r} belong to declarative domains: "
            "change them with their rules file",
        )


def _require_actor(actor: str) -> None:
    if not actor:
        raise InvalidArgument.field("actor", "operator calls need an actor")
