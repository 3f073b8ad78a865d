"""Administration of the limiter's configuration: rules, throttle levels and the global
shadow switch, each write audited, and the configuration snapshot kept current.

Writes go to the config store (``store.py``); every write bumps its version, which this
replica reloads at once and the others notice on their next refresh.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from mc_common.errors import InvalidArgument, Unavailable
from mc_limiter.audit import AuditEvent, AuditSink
from mc_limiter.planning import Planner
from mc_limiter.rules import Rule, StoredRule, parse_rule
from mc_limiter.sharding import SHARD_UNAVAILABLE_ERRORS
from mc_limiter.store import RuleStore
from mc_limiter.throttle import ThrottleLevel

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_REFRESH_ERRORS: tuple[type[BaseException], ...] = (Unavailable, *SHARD_UNAVAILABLE_ERRORS)


class Administration:
    """Operator calls on the configuration in ``store``; ``planner`` plans from the snapshot
    this loads. Every write needs an ``actor`` and emits an ``AuditEvent`` to ``audit``."""

    def __init__(self, store: RuleStore, planner: Planner, audit: AuditSink) -> None:
        self.store = store
        self._planner = planner
        self._audit = audit

    async def reload(self) -> None:
        """Load the configuration now. Raises ``Unavailable`` if the store is unreachable."""
        try:
            snapshot = await self.store.load()
        except SHARD_UNAVAILABLE_ERRORS as exc:
            raise Unavailable(f"limiter config store unreachable: {exc!r}") from exc
        self._planner.apply(snapshot)

    async def refresh_once(self) -> None:
        """Reload if the store's version moved (the periodic refresh of every replica)."""
        try:
            if await self.store.version() != self._planner.snapshot.version:
                await self.reload()
        except _REFRESH_ERRORS:
            log.debug("config refresh skipped: store unreachable")

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
        before = self._planner.snapshot.rules.get(parsed.id)
        stored = await _admin(self.store.put_rule(parsed, actor, expected_revision))
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
        return await _admin(self.store.get_rule(rule_id))

    async def list_rules(self, tenant: str | None = None) -> list[StoredRule]:
        """All rules, or those that can apply to ``tenant`` (its literal rules and wildcards
        matching it), sorted by id."""
        await self._reload_quietly()
        rules = sorted(self._planner.snapshot.rules.values(), key=lambda s: s.rule.id)
        if tenant is None:
            return rules
        return [s for s in rules if s.rule.match.matches_tenant(tenant)]

    async def delete_rule(
        self, rule_id: str, *, actor: str, expected_revision: int | None = None, reason: str = ""
    ) -> None:
        _require_actor(actor)
        before = self._planner.snapshot.rules.get(rule_id)
        await _admin(self.store.delete_rule(rule_id, expected_revision))
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
        await self._reload_quietly()
        return event

    async def set_global_shadow(self, enabled: bool, *, actor: str, reason: str = "") -> AuditEvent:
        """Switch every rule to shadow mode (counts, never denies) or back."""
        _require_actor(actor)
        previous = await _admin(self.store.set_global_shadow(enabled))
        event = await self._audit_event(
            "limiter.shadow.global", actor, "global", previous, enabled, reason
        )
        await self._reload_quietly()
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

    async def _reload_quietly(self) -> None:
        try:
            await self.reload()
        except Unavailable:
            log.warning("config reload failed; keeping version %s", self._planner.snapshot.version)


async def _admin(call: Awaitable[_T]) -> _T:
    try:
        return await call
    except SHARD_UNAVAILABLE_ERRORS as exc:
        raise Unavailable(f"limiter config store unreachable: {exc!r}") from exc


def _require_actor(actor: str) -> None:
    if not actor:
        raise InvalidArgument.field("actor", "operator calls need an actor")
