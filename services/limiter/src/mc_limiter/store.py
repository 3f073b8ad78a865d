"""Persistence of the limiter's configuration in Redis: rules, per-tenant throttle levels and
the global shadow switch, plus an in-memory snapshot indexed for the hot path.

Layout (all keys share the ``{cfg}`` hash tag, so a Redis Cluster keeps them in one slot):

* ``<prefix>:{cfg}:rule:<id>`` hash: ``json`` (the rule), ``revision``, ``updated_ms``,
  ``updated_by``;
* ``<prefix>:{cfg}:rules`` set of rule ids;
* ``<prefix>:{cfg}:throttle`` hash tenant -> level;
* ``<prefix>:{cfg}:flags`` hash (``global_shadow`` = "1"/"0");
* ``<prefix>:{cfg}:version`` counter bumped by every write; replicas poll it and reload.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError
from redis.asyncio import Redis

from mc_limiter.errors import RevisionMismatchError, RuleNotFoundError
from mc_limiter.rules import Rule, StoredRule
from mc_limiter.scripts import LuaScript
from mc_limiter.throttle import THROTTLE_FACTORS, ThrottleLevel

log = logging.getLogger(__name__)

# KEYS: rule key, ids set, version key. ARGV: id, json, expected revision (-1: any),
# updated_ms, updated_by. Reply {revision, version} or {-1, current revision}.
_PUT_LUA = r"""
local cur = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
local exp = tonumber(ARGV[3])
if exp >= 0 and exp ~= cur then return {-1, cur} end
local rev = cur + 1
redis.call('HSET', KEYS[1], 'json', ARGV[2], 'revision', rev, 'updated_ms', ARGV[4],
  'updated_by', ARGV[5])
redis.call('SADD', KEYS[2], ARGV[1])
return {rev, redis.call('INCR', KEYS[3])}
"""

# KEYS: rule key, ids set, version key. ARGV: id, expected revision (-1: any).
# Reply {0, version} deleted, {-1, current} mismatch, {-2, 0} not found.
_DELETE_LUA = r"""
local cur = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
if cur == 0 then return {-2, 0} end
local exp = tonumber(ARGV[2])
if exp >= 0 and exp ~= cur then return {-1, cur} end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return {0, redis.call('INCR', KEYS[3])}
"""

_PUT = LuaScript.of(_PUT_LUA)
_DELETE = LuaScript.of(_DELETE_LUA)


@dataclass(slots=True)
class ConfigSnapshot:
    """Immutable-by-convention view of the configuration, indexed by literal tenant."""

    version: int = 0
    rules: dict[str, StoredRule] = field(default_factory=dict)
    throttles: dict[str, ThrottleLevel] = field(default_factory=dict)
    global_shadow: bool = False
    _by_tenant: dict[str, list[Rule]] = field(default_factory=dict)
    _any_tenant: list[Rule] = field(default_factory=list)

    def __post_init__(self) -> None:
        for stored in sorted(self.rules.values(), key=lambda s: s.rule.id):
            literal = stored.rule.match.literal_tenant
            if literal is None:
                self._any_tenant.append(stored.rule)
            else:
                self._by_tenant.setdefault(literal, []).append(stored.rule)

    def rules_for(self, tenant: str, token: str, key: str) -> list[Rule]:
        candidates = self._by_tenant.get(tenant, []) + self._any_tenant
        return [r for r in candidates if r.match.matches(tenant, token, key)]

    def throttle_factor(self, tenant: str) -> float:
        return THROTTLE_FACTORS[self.throttles.get(tenant, ThrottleLevel.NONE)]


class RuleStore:
    """Reads and writes the configuration; every write bumps the version counter."""

    def __init__(self, client: Redis, key_prefix: str) -> None:
        self._r = client
        base = f"{key_prefix}:{{cfg}}"
        self._rule_prefix = f"{base}:rule:"
        self._ids = f"{base}:rules"
        self._throttle = f"{base}:throttle"
        self._flags = f"{base}:flags"
        self._version = f"{base}:version"

    async def version(self) -> int:
        raw = await self._r.get(self._version)
        return int(raw) if raw is not None else 0

    async def put_rule(
        self, rule: Rule, actor: str, expected_revision: int | None = None
    ) -> StoredRule:
        now_ms = int(time.time() * 1000)
        reply = await _PUT.run(
            self._r,
            [self._rule_prefix + rule.id, self._ids, self._version],
            [
                rule.id,
                rule.model_dump_json(),
                -1 if expected_revision is None else expected_revision,
                now_ms,
                actor,
            ],
        )
        revision, other = int(reply[0]), int(reply[1])
        if revision < 0:
            raise RevisionMismatchError(rule.id, expected_revision or 0, other)
        return StoredRule(rule, revision, now_ms, actor)

    async def get_rule(self, rule_id: str) -> StoredRule:
        raw: dict[bytes, bytes] = await self._r.hgetall(self._rule_prefix + rule_id)  # type: ignore[assignment]
        if not raw:
            raise RuleNotFoundError(rule_id)
        return _decode_stored(raw)

    async def delete_rule(self, rule_id: str, expected_revision: int | None = None) -> None:
        reply = await _DELETE.run(
            self._r,
            [self._rule_prefix + rule_id, self._ids, self._version],
            [rule_id, -1 if expected_revision is None else expected_revision],
        )
        status, other = int(reply[0]), int(reply[1])
        if status == -2:
            raise RuleNotFoundError(rule_id)
        if status == -1:
            raise RevisionMismatchError(rule_id, expected_revision or 0, other)

    async def set_throttle(self, tenant: str, level: ThrottleLevel) -> ThrottleLevel:
        """Set a tenant's level and return the previous one (atomically)."""
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hget(self._throttle, tenant)
            if level is ThrottleLevel.NONE:
                pipe.hdel(self._throttle, tenant)
            else:
                pipe.hset(self._throttle, tenant, level.value)
            pipe.incr(self._version)
            previous, _, _ = await pipe.execute()
        return ThrottleLevel(previous.decode()) if previous else ThrottleLevel.NONE

    async def set_global_shadow(self, enabled: bool) -> bool:
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hget(self._flags, "global_shadow")
            pipe.hset(self._flags, "global_shadow", "1" if enabled else "0")
            pipe.incr(self._version)
            previous, _, _ = await pipe.execute()
        return bool(previous == b"1")

    async def load(self) -> ConfigSnapshot:
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.get(self._version)
            pipe.smembers(self._ids)
            pipe.hgetall(self._throttle)
            pipe.hgetall(self._flags)
            version_raw, ids, throttles_raw, flags = await pipe.execute()
        rule_ids = sorted(i.decode() for i in ids)
        rules: dict[str, StoredRule] = {}
        if rule_ids:
            async with self._r.pipeline(transaction=False) as pipe:
                for rule_id in rule_ids:
                    pipe.hgetall(self._rule_prefix + rule_id)
                raws: list[dict[bytes, bytes]] = await pipe.execute()
            for rule_id, raw in zip(rule_ids, raws, strict=True):
                if not raw:
                    continue
                try:
                    rules[rule_id] = _decode_stored(raw)
                except (ValidationError, ValueError, KeyError):
                    log.exception("skipping unreadable rule %s", rule_id)
        throttles: dict[str, ThrottleLevel] = {}
        for tenant, level in throttles_raw.items():
            try:
                throttles[tenant.decode()] = ThrottleLevel(level.decode())
            except ValueError:
                log.error("ignoring unknown throttle level %r for %r", level, tenant)
        return ConfigSnapshot(
            version=int(version_raw) if version_raw is not None else 0,
            rules=rules,
            throttles=throttles,
            global_shadow=flags.get(b"global_shadow") == b"1",
        )


def _decode_stored(raw: Mapping[bytes, bytes]) -> StoredRule:
    rule = Rule.model_validate(json.loads(raw[b"json"]))
    return StoredRule(
        rule=rule,
        revision=int(raw[b"revision"]),
        updated_ms=int(raw.get(b"updated_ms", b"0")),
        updated_by=raw.get(b"updated_by", b"").decode(),
    )
