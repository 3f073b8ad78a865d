"""Persistence of the limiter's configuration in Redis: rules, per-tenant throttle levels and
the global shadow switch, plus the in-memory snapshot indexed for the hot path.

Layout (all keys share the ``{cfg}`` hash tag, so a Redis Cluster keeps them in one slot):

* ``<prefix>:{cfg}:rule:<id>`` hash: ``json`` (the rule), ``revision``, ``updated_ms``,
  ``updated_by``;
* ``<prefix>:{cfg}:rules`` set of rule ids;
* ``<prefix>:{cfg}:throttle`` hash tenant -> level;
* ``<prefix>:{cfg}:flags`` hash (``global_shadow`` = "1"/"0");
* ``<prefix>:{cfg}:version`` counter bumped by every write; replicas poll it;
* ``<prefix>:{cfg}:changes`` sorted set: what each write changed, scored by version, so a
  replica applies only the changes since its version (see docs/adr/0016-incremental-rule-writes.md).
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from mc_limiter.envoy_config import ConfigError, DomainConfig, load_config
from mc_limiter.errors import RevisionMismatchError, RuleNotFoundError
from mc_limiter.rule_index import RuleIndex
from mc_limiter.rules import Rule, StoredRule
from mc_limiter.scripts import LuaScript
from mc_limiter.throttle import THROTTLE_FACTORS, ThrottleLevel

log = logging.getLogger(__name__)

CHANGELOG_MAX = 10_000
LOAD_CHUNK = 128  # rules fetched per round trip on a full load
DECODE_STEP = 16  # rules parsed between yields to the event loop (a few ms at most)

# Every write bumps the version and records what it changed in the changelog (a sorted set
# scored by version, member "<version>|<kind>|<subject>", kind r = rule, t = throttle,
# s = shadow switch), trimmed to CHANGELOG_MAX entries. Replicas replay the changelog after
# their version; a replica further behind (or a reset store) loads everything.
_LOG = r"""
local function log(kind, subject)
  local v = redis.call('INCR', KEYS[3])
  redis.call('ZADD', KEYS[4], v, v .. '|' .. kind .. '|' .. subject)
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(ARGV[#ARGV]) + 1))
  return v
end
"""

# KEYS: rule key, ids set, version, changelog. ARGV: id, json, expected revision (-1: any),
# updated_ms, updated_by, changelog max. Reply {revision, version} or {-1, current revision}.
_PUT_LUA = (
    _LOG
    + r"""
local cur = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
local exp = tonumber(ARGV[3])
if exp >= 0 and exp ~= cur then return {-1, cur} end
local rev = cur + 1
redis.call('HSET', KEYS[1], 'json', ARGV[2], 'revision', rev, 'updated_ms', ARGV[4],
  'updated_by', ARGV[5])
redis.call('SADD', KEYS[2], ARGV[1])
return {rev, log('r', ARGV[1])}
"""
)

# KEYS: rule key, ids set, version, changelog. ARGV: id, expected revision (-1: any),
# changelog max. Reply {0, version} deleted, {-1, current} mismatch, {-2, 0} not found.
_DELETE_LUA = (
    _LOG
    + r"""
local cur = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
if cur == 0 then return {-2, 0} end
local exp = tonumber(ARGV[2])
if exp >= 0 and exp ~= cur then return {-1, cur} end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return {0, log('r', ARGV[1])}
"""
)

# KEYS: throttle hash, unused, version, changelog. ARGV: tenant, level ('' = none), max.
# Reply: the previous level ('' = none).
_THROTTLE_LUA = (
    _LOG
    + r"""
local previous = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if ARGV[2] == '' then redis.call('HDEL', KEYS[1], ARGV[1])
else redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
log('t', ARGV[1])
return previous
"""
)

# KEYS: flags hash, unused, version, changelog. ARGV: '1'/'0', max. Reply: previous value.
_SHADOW_LUA = (
    _LOG
    + r"""
local previous = redis.call('HGET', KEYS[1], 'global_shadow') or '0'
redis.call('HSET', KEYS[1], 'global_shadow', ARGV[1])
log('s', '')
return previous
"""
)

# KEYS: domain hash, domains set, version, changelog. ARGV: domain, source, file name,
# expected revision (-1: any), updated_ms, updated_by, max. Reply as _PUT_LUA's.
_PUT_DOMAIN_LUA = (
    _LOG
    + r"""
local cur = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
local exp = tonumber(ARGV[4])
if exp >= 0 and exp ~= cur then return {-1, cur} end
local rev = cur + 1
redis.call('HSET', KEYS[1], 'source', ARGV[2], 'file_name', ARGV[3], 'revision', rev,
  'updated_ms', ARGV[5], 'updated_by', ARGV[6])
redis.call('SADD', KEYS[2], ARGV[1])
return {rev, log('d', ARGV[1])}
"""
)

# KEYS: domain hash, domains set, version, changelog. ARGV: domain, max. Reply as _DELETE's.
_DELETE_DOMAIN_LUA = (
    _LOG
    + r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2, 0} end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return {0, log('d', ARGV[1])}
"""
)

_PUT = LuaScript.of(_PUT_LUA)
_PUT_DOMAIN = LuaScript.of(_PUT_DOMAIN_LUA)
_DELETE_DOMAIN = LuaScript.of(_DELETE_DOMAIN_LUA)
_DELETE = LuaScript.of(_DELETE_LUA)
_THROTTLE = LuaScript.of(_THROTTLE_LUA)
_SHADOW = LuaScript.of(_SHADOW_LUA)


class ChangeKind(StrEnum):
    RULE = "r"
    THROTTLE = "t"
    SHADOW = "s"
    DOMAIN = "d"


@dataclass(frozen=True, slots=True)
class StoredDomain:
    """A declarative domain as stored: its rules file (``envoy_config``) and revision."""

    config: DomainConfig
    revision: int
    updated_ms: int
    updated_by: str


@dataclass(frozen=True, slots=True)
class Change:
    """One write as a replica replays it: ``value`` is the state read after the write (a
    rule or ``None`` if deleted, a throttle level, the shadow switch)."""

    version: int
    kind: ChangeKind
    subject: str
    value: StoredRule | StoredDomain | ThrottleLevel | bool | None


class ConfigSnapshot:
    """The configuration in memory, indexed for checks (``rule_index``) and for listing
    (ids in order, literal-tenant rules by tenant). Changed in place by ``put``/``delete``
    and the throttle and shadow setters; each costs O(log n) plus the rule's own patterns."""

    def __init__(self) -> None:
        self.version = 0
        self.rules: dict[str, StoredRule] = {}
        self.throttles: dict[str, ThrottleLevel] = {}
        self.global_shadow = False
        self.domains: dict[str, StoredDomain] = {}
        self._index = RuleIndex()
        self._ids: list[str] = []
        self._by_tenant: dict[str, list[str]] = {}
        self._any_tenant: list[str] = []

    def put(self, stored: StoredRule) -> StoredRule | None:
        """Add or replace a rule; returns the one it replaced."""
        previous = self.delete(stored.rule.id)
        rule = stored.rule
        self.rules[rule.id] = stored
        self._index.add(rule)
        bisect.insort(self._ids, rule.id)
        literal = rule.match.literal_tenant
        bisect.insort(
            self._any_tenant if literal is None else self._by_tenant.setdefault(literal, []),
            rule.id,
        )
        return previous

    def delete(self, rule_id: str) -> StoredRule | None:
        stored = self.rules.pop(rule_id, None)
        if stored is None:
            return None
        self._index.remove(stored.rule)
        _discard_sorted(self._ids, rule_id)
        literal = stored.rule.match.literal_tenant
        if literal is None:
            _discard_sorted(self._any_tenant, rule_id)
        else:
            ids = self._by_tenant[literal]
            _discard_sorted(ids, rule_id)
            if not ids:
                del self._by_tenant[literal]
        return stored

    def set_domain(self, name: str, stored: StoredDomain | None) -> list[StoredRule]:
        """Replace a declarative domain (``None``: remove it) and the rules derived from its
        nodes; returns the rules removed and added (their matchers are what changed)."""
        changed: list[StoredRule] = []
        previous = self.domains.pop(name, None)
        if previous is not None:
            for rule in previous.config.rules():
                removed = self.delete(rule.id)
                if removed is not None:
                    changed.append(removed)
        if stored is not None:
            self.domains[name] = stored
            for rule in stored.config.rules():
                derived = StoredRule(rule, stored.revision, stored.updated_ms, stored.updated_by)
                self.put(derived)
                changed.append(derived)
        return changed

    def set_throttle(self, tenant: str, level: ThrottleLevel) -> None:
        if level is ThrottleLevel.NONE:
            self.throttles.pop(tenant, None)
        else:
            self.throttles[tenant] = level

    def rules_for(self, tenant: str, token: str, key: str) -> list[Rule]:
        return self._index.match(tenant, token, key)

    def throttle_factor(self, tenant: str) -> float:
        return THROTTLE_FACTORS[self.throttles.get(tenant, ThrottleLevel.NONE)]

    def page(
        self, tenant: str | None, after: str, size: int, max_scan: int
    ) -> tuple[list[StoredRule], str | None]:
        """Up to ``size`` rules with ids above ``after`` in id order (only those that can
        apply to ``tenant`` when given), looking at no more than ``max_scan`` rules; the id
        to continue after, or ``None`` at the end. A page may be short (even empty) when
        many wildcard-tenant rules in a row do not match ``tenant``."""
        if tenant is None:
            at = bisect.bisect_right(self._ids, after)
            ids = self._ids[at : at + size]
            more = at + size < len(self._ids)
            return [self.rules[i] for i in ids], (ids[-1] if more and ids else None)
        own = self._by_tenant.get(tenant, [])
        wild = self._any_tenant
        i, j = bisect.bisect_right(own, after), bisect.bisect_right(wild, after)
        out: list[StoredRule] = []
        last = after
        scanned = 0
        while len(out) < size and scanned < max_scan and (i < len(own) or j < len(wild)):
            if j >= len(wild) or (i < len(own) and own[i] < wild[j]):
                last = own[i]
                out.append(self.rules[last])
                i += 1
            else:
                last = wild[j]
                stored = self.rules[last]
                if stored.rule.match.matches_tenant(tenant):
                    out.append(stored)
                j += 1
            scanned += 1
        more = i < len(own) or j < len(wild)
        return out, (last if more else None)


def _discard_sorted(ids: list[str], value: str) -> None:
    at = bisect.bisect_left(ids, value)
    if at < len(ids) and ids[at] == value:
        del ids[at]


class RuleStore:
    """Reads and writes the configuration; every write bumps the version counter and is
    recorded in the changelog."""

    def __init__(self, client: Redis, key_prefix: str, changelog_max: int = CHANGELOG_MAX) -> None:
        self._r = client
        base = f"{key_prefix}:{{cfg}}"
        self._rule_prefix = f"{base}:rule:"
        self._ids = f"{base}:rules"
        self._throttle = f"{base}:throttle"
        self._flags = f"{base}:flags"
        self._version = f"{base}:version"
        self._changes = f"{base}:changes"
        self._token_key = f"{base}:page-token-key"
        self._domain_prefix = f"{base}:domain:"
        self._domains = f"{base}:domains"
        self._max = changelog_max
        # The version made by this store's latest rule write (set before the write returns,
        # so read it right after awaiting the write).
        self.last_version = 0

    async def version(self) -> int:
        raw = await self._r.get(self._version)
        return int(raw) if raw is not None else 0

    async def put_rule(
        self, rule: Rule, actor: str, expected_revision: int | None = None
    ) -> StoredRule:
        """Write ``rule``; ``last_version`` is then the version this write made."""
        now_ms = int(time.time() * 1000)
        reply = await _PUT.run(
            self._r,
            [self._rule_prefix + rule.id, self._ids, self._version, self._changes],
            [
                rule.id,
                rule.model_dump_json(),
                -1 if expected_revision is None else expected_revision,
                now_ms,
                actor,
                self._max,
            ],
        )
        revision, other = int(reply[0]), int(reply[1])
        if revision < 0:
            raise RevisionMismatchError(rule.id, expected_revision or 0, other)
        self.last_version = other
        return StoredRule(rule, revision, now_ms, actor)

    async def get_rule(self, rule_id: str) -> StoredRule:
        raw: dict[bytes, bytes] = await self._r.hgetall(self._rule_prefix + rule_id)  # type: ignore[assignment]
        if not raw:
            raise RuleNotFoundError(rule_id)
        return _decode_stored(raw)

    async def delete_rule(self, rule_id: str, expected_revision: int | None = None) -> None:
        reply = await _DELETE.run(
            self._r,
            [self._rule_prefix + rule_id, self._ids, self._version, self._changes],
            [rule_id, -1 if expected_revision is None else expected_revision, self._max],
        )
        status, other = int(reply[0]), int(reply[1])
        if status == -2:
            raise RuleNotFoundError(rule_id)
        if status == -1:
            raise RevisionMismatchError(rule_id, expected_revision or 0, other)
        self.last_version = other

    async def set_throttle(self, tenant: str, level: ThrottleLevel) -> ThrottleLevel:
        """Set a tenant's level and return the previous one (atomically)."""
        value = "" if level is ThrottleLevel.NONE else level.value
        previous = await _THROTTLE.run(
            self._r,
            [self._throttle, self._ids, self._version, self._changes],
            [tenant, value, self._max],
        )
        return ThrottleLevel(previous.decode()) if previous else ThrottleLevel.NONE

    async def set_global_shadow(self, enabled: bool) -> bool:
        previous = await _SHADOW.run(
            self._r,
            [self._flags, self._ids, self._version, self._changes],
            ["1" if enabled else "0", self._max],
        )
        return bool(previous == b"1")

    async def put_domain(
        self, config: DomainConfig, actor: str, expected_revision: int | None = None
    ) -> StoredDomain:
        """Store a declarative domain's rules file (one write: the whole domain at once)."""
        now_ms = int(time.time() * 1000)
        reply = await _PUT_DOMAIN.run(
            self._r,
            [self._domain_prefix + config.domain, self._domains, self._version, self._changes],
            [
                config.domain,
                config.source,
                config.file_name,
                -1 if expected_revision is None else expected_revision,
                now_ms,
                actor,
                self._max,
            ],
        )
        revision, other = int(reply[0]), int(reply[1])
        if revision < 0:
            raise RevisionMismatchError(f"domain:{config.domain}", expected_revision or 0, other)
        self.last_version = other
        return StoredDomain(config, revision, now_ms, actor)

    async def get_domain(self, name: str) -> StoredDomain | None:
        raw: dict[bytes, bytes] = await self._r.hgetall(self._domain_prefix + name)  # type: ignore[assignment]
        return await asyncio.to_thread(_decode_domain, name, raw) if raw else None

    async def delete_domain(self, name: str) -> bool:
        reply = await _DELETE_DOMAIN.run(
            self._r,
            [self._domain_prefix + name, self._domains, self._version, self._changes],
            [name, self._max],
        )
        if int(reply[0]) == -2:
            return False
        self.last_version = int(reply[1])
        return True

    async def page_token_key(self) -> bytes:
        """The HMAC key of ListRules page tokens that replicas without configured keys share
        (32 random bytes, created by whichever replica asks first)."""
        await self._r.set(self._token_key, secrets.token_bytes(32), nx=True)
        key = await self._r.get(self._token_key)
        if not isinstance(key, bytes):  # deleted in between: the next call makes a new one
            raise RedisConnectionError("page token key vanished")
        return key

    async def changes_since(self, version: int, limit: int = 64) -> list[Change] | None:
        """The writes after ``version`` (at most ``limit``, oldest first) with the state each
        left, or ``None`` when they cannot be replayed (the changelog no longer reaches back
        that far, or the store was reset): then ``load()`` everything."""
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.get(self._version)
            pipe.zrangebyscore(self._changes, f"({version}", "+inf", start=0, num=limit)
            current_raw, members = await pipe.execute()
        current = int(current_raw) if current_raw is not None else 0
        if current == version:
            return []
        if current < version or not members:
            return None
        entries = []
        for member in members:
            v, kind, subject = member.decode().split("|", 2)
            entries.append((int(v), ChangeKind(kind), subject))
        if entries[0][0] != version + 1:
            return None  # trimmed past our version
        async with self._r.pipeline(transaction=False) as pipe:
            for _, kind, subject in entries:
                if kind is ChangeKind.RULE:
                    pipe.hgetall(self._rule_prefix + subject)
                elif kind is ChangeKind.DOMAIN:
                    pipe.hgetall(self._domain_prefix + subject)
                elif kind is ChangeKind.THROTTLE:
                    pipe.hget(self._throttle, subject)
                else:
                    pipe.hget(self._flags, "global_shadow")
            values = await pipe.execute()
        changes = []
        for at, ((v, kind, subject), raw) in enumerate(zip(entries, values, strict=True)):
            if at % DECODE_STEP == DECODE_STEP - 1:
                await asyncio.sleep(0)
            value: StoredRule | StoredDomain | ThrottleLevel | bool | None
            if kind is ChangeKind.RULE:
                value = _decode_or_none(subject, raw) if raw else None
            elif kind is ChangeKind.DOMAIN:
                # Parsed in a thread: a file of up to 1 MiB must not hold the event loop.
                value = await asyncio.to_thread(_decode_domain, subject, raw) if raw else None
            elif kind is ChangeKind.THROTTLE:
                value = _level(subject, raw)
            else:
                value = raw == b"1"
            changes.append(Change(v, kind, subject, value))
        return changes

    async def load(self) -> ConfigSnapshot:
        """Everything, read with ``SSCAN`` and indexed ``LOAD_CHUNK`` rules at a time with a
        yield to the event loop in between, so a full load never stalls checks for long.
        The version is read first: changes made during the load are replayed afterwards."""
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.get(self._version)
            pipe.hgetall(self._throttle)
            pipe.hgetall(self._flags)
            version_raw, throttles_raw, flags = await pipe.execute()
        snapshot = ConfigSnapshot()
        cursor: int = 0
        while True:
            cursor, members = await self._r.sscan(self._ids, cursor, count=LOAD_CHUNK)
            ids = [m.decode() if isinstance(m, bytes) else m for m in members]
            for at in range(0, len(ids), LOAD_CHUNK):
                await self._load_chunk(snapshot, ids[at : at + LOAD_CHUNK])
            if cursor == 0:
                break
        names: set[bytes] = await self._r.smembers(self._domains)  # type: ignore[assignment,misc]
        for name in sorted(m.decode() for m in names):
            raw: dict[bytes, bytes] = await self._r.hgetall(self._domain_prefix + name)  # type: ignore[assignment,misc]
            stored = await asyncio.to_thread(_decode_domain, name, raw) if raw else None
            if stored is not None:
                snapshot.set_domain(name, stored)
            await asyncio.sleep(0)
        for tenant, level in throttles_raw.items():
            snapshot.set_throttle(tenant.decode(), _level(tenant.decode(), level))
        snapshot.global_shadow = flags.get(b"global_shadow") == b"1"
        snapshot.version = int(version_raw) if version_raw is not None else 0
        return snapshot

    async def _load_chunk(self, snapshot: ConfigSnapshot, ids: list[str]) -> None:
        async with self._r.pipeline(transaction=False) as pipe:
            for rule_id in ids:
                pipe.hgetall(self._rule_prefix + rule_id)
            raws: list[dict[bytes, bytes]] = await pipe.execute()
        for at, (rule_id, raw) in enumerate(zip(ids, raws, strict=True)):
            stored = _decode_or_none(rule_id, raw) if raw else None
            if stored is not None:
                snapshot.put(stored)
            if at % DECODE_STEP == DECODE_STEP - 1:
                await asyncio.sleep(0)  # parsing rules is the costly part: short loop steps
        # The rules live until the next full load: out of the collector's full passes, which
        # would otherwise walk every rule object (pauses of hundreds of ms at 100,000 rules).
        # Freezing only moves lists; it costs nothing per object.
        gc.freeze()
        await asyncio.sleep(0)


def _decode_domain(name: str, raw: Mapping[bytes, bytes]) -> StoredDomain | None:
    try:
        config = load_config(raw[b"source"].decode(), raw.get(b"file_name", b"").decode())
    except (ConfigError, KeyError, UnicodeDecodeError):
        log.exception("skipping unreadable domain %s", name)
        return None
    return StoredDomain(
        config,
        int(raw[b"revision"]),
        int(raw.get(b"updated_ms", b"0")),
        raw.get(b"updated_by", b"").decode(),
    )


def _decode_or_none(rule_id: str, raw: Mapping[bytes, bytes]) -> StoredRule | None:
    try:
        return _decode_stored(raw)
    except (ValidationError, ValueError, KeyError):
        log.exception("skipping unreadable rule %s", rule_id)
        return None


def _level(tenant: str, raw: bytes | None) -> ThrottleLevel:
    if not raw:
        return ThrottleLevel.NONE
    try:
        return ThrottleLevel(raw.decode())
    except ValueError:
        log.error("ignoring unknown throttle level %r for %r", raw, tenant)
        return ThrottleLevel.NONE


def _decode_stored(raw: Mapping[bytes, bytes]) -> StoredRule:
    rule = Rule.model_validate(json.loads(raw[b"json"]))
    return StoredRule(
        rule=rule,
        revision=int(raw[b"revision"]),
        updated_ms=int(raw.get(b"updated_ms", b"0")),
        updated_by=raw.get(b"updated_by", b"").decode(),
    )
