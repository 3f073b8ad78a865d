"""The last good configuration, kept in a local file so a replica can start without its config
Redis.

Every configuration this replica loads or catches up with is written here (atomically: a
temporary file renamed over the old one; encoded and written in a thread, from a shallow copy
taken on the event loop). When the store is unreachable at start-up
the limiter serves from this snapshot in degraded mode instead of exiting (a crash loop under
Kubernetes), and reloads from the store as soon as it answers. Without a file (first start
ever, or no path configured) it starts with no rules: checks follow the unmatched policy.

Format: JSON ``{"format": 1, "version", "global_shadow", "throttles": {tenant: level},
"rules": [{"rule": <rule>, "revision", "updated_ms", "updated_by"}], "domains": [{"source",
"file_name", "revision", "updated_ms", "updated_by"}]}`` (declarative domains as their
rules files; their derived rules are not saved separately). A file that cannot be
read or parsed is ignored (logged), never fatal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mc_limiter.envoy_config import ConfigError, is_declarative, load_config
from mc_limiter.rules import Rule, StoredRule
from mc_limiter.store import ConfigSnapshot, StoredDomain
from mc_limiter.throttle import ThrottleLevel

log = logging.getLogger(__name__)

FORMAT = 1


@dataclass(frozen=True, slots=True)
class _Copy:
    """What is saved, copied on the event loop (the live snapshot changes in place; rules
    and their stored records are immutable, so shallow copies suffice)."""

    version: int
    global_shadow: bool
    throttles: dict[str, ThrottleLevel]
    rules: list[StoredRule]
    domains: list[StoredDomain]

    @classmethod
    def of(cls, snapshot: ConfigSnapshot) -> _Copy:
        return cls(
            snapshot.version,
            snapshot.global_shadow,
            dict(snapshot.throttles),
            # Rules derived from a declarative domain are saved as their domain's file.
            [s for s in snapshot.rules.values() if not is_declarative(s.rule.id)],
            list(snapshot.domains.values()),
        )


def encode(saved: ConfigSnapshot | _Copy) -> bytes:
    copy = saved if isinstance(saved, _Copy) else _Copy.of(saved)
    data: dict[str, Any] = {
        "format": FORMAT,
        "version": copy.version,
        "global_shadow": copy.global_shadow,
        "throttles": {tenant: level.value for tenant, level in copy.throttles.items()},
        "rules": [
            {
                "rule": stored.rule.model_dump(mode="json"),
                "revision": stored.revision,
                "updated_ms": stored.updated_ms,
                "updated_by": stored.updated_by,
            }
            for stored in copy.rules
        ],
        "domains": [
            {
                "source": domain.config.source,
                "file_name": domain.config.file_name,
                "revision": domain.revision,
                "updated_ms": domain.updated_ms,
                "updated_by": domain.updated_by,
            }
            for domain in copy.domains
        ],
    }
    return json.dumps(data, separators=(",", ":")).encode()


def decode(raw: bytes) -> ConfigSnapshot:
    """Raises ``ValueError`` (or a pydantic ``ValidationError``) for anything malformed."""
    data = json.loads(raw)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError("not a limiter configuration snapshot")
    snapshot = ConfigSnapshot()
    for item in data["rules"]:
        rule = Rule.model_validate(item["rule"])
        snapshot.put(
            StoredRule(
                rule, int(item["revision"]), int(item["updated_ms"]), str(item["updated_by"])
            )
        )
    for item in data.get("domains", []):
        config = load_config(str(item["source"]), str(item["file_name"]))
        snapshot.set_domain(
            config.domain,
            StoredDomain(
                config, int(item["revision"]), int(item["updated_ms"]), str(item["updated_by"])
            ),
        )
    for tenant, level in data["throttles"].items():
        snapshot.set_throttle(str(tenant), ThrottleLevel(level))
    snapshot.global_shadow = bool(data["global_shadow"])
    snapshot.version = int(data["version"])
    return snapshot


class ConfigCache:
    """Saves and loads the snapshot file at ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    async def save(self, snapshot: ConfigSnapshot) -> None:
        """Write ``snapshot`` (failures are logged: the cache is best effort)."""
        copy = _Copy.of(snapshot)  # on the loop: O(rules) pointer copies, no encoding
        try:
            await asyncio.to_thread(self._write, copy)
        except OSError:
            log.exception("could not save the configuration snapshot to %s", self.path)

    def _write(self, copy: _Copy) -> None:
        raw = encode(copy)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(raw)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def load(self) -> ConfigSnapshot | None:
        """The saved snapshot, or ``None`` when there is none or it is unreadable."""
        try:
            raw = await asyncio.to_thread(self.path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError:
            log.exception("could not read the configuration snapshot %s", self.path)
            return None
        try:
            return await asyncio.to_thread(decode, raw)
        except (ValueError, KeyError, TypeError, ValidationError, ConfigError):
            log.exception("ignoring an unreadable configuration snapshot %s", self.path)
            return None
