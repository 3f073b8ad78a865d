"""Provenance search (MC-PRX-931/932): receipts, decisions and executions by digest, task
(step) name, decision rule, package, execution id and free words, newest first.

Every searchable item has a row in `search_entries` whose `keys` hold tenant-prefixed terms
(`<tenant>|<kind>:<value>`), written by triggers in the same transaction as the item (migration
0003). A search is one `keys @> terms` lookup on a GIN index, so it reads only the caller's
tenant's postings, and keyset pagination keeps every page as cheap as the first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from mc_common.db import Pool
from mc_common.errors import InvalidArgument

MAX_TERMS: Final = 16
DEFAULT_WINDOW: Final = timedelta(days=30)
MAX_WINDOW: Final = timedelta(days=180)
DEFAULT_PAGE: Final = 50
_PREFIXES: Final = {
    "digest": "h",
    "sha256": "h",
    "task": "s",
    "step": "s",
    "decision": "d",
    "rule": "d",
    "package": "p",
    "pack": "p",
    "execution": "e",
}
_WORD: Final = re.compile(r"[^\W_]+")


@dataclass(frozen=True, slots=True)
class Hit:
    kind: str
    ref: str
    at: datetime
    title: str


def terms(tenant: str, q: str) -> list[str]:
    """The `keys` terms a search text stands for; INVALID_ARGUMENT when it has none, too many,
    or an unknown `field:` prefix."""
    found: list[str] = []
    for token in q.split():
        if "\x00" in token:
            raise InvalidArgument.field("q", "contains a NUL character")
        field, sep, value = token.partition(":")
        if sep and field.lower() in _PREFIXES:
            if not value:
                raise InvalidArgument.field("q", f"{field}: needs a value")
            found.append(f"{_PREFIXES[field.lower()]}:{value}")
        elif sep and field and value and field.isalpha():
            raise InvalidArgument.field(
                "q",
                f"unknown search field {field!r}; use digest:, task:, decision:, package:, "
                "execution: or plain words",
            )
        else:
            found.extend(f"w:{w}" for w in _WORD.findall(token.lower()) if 2 <= len(w) <= 64)
    unique = list(dict.fromkeys(found))
    if not unique:
        raise InvalidArgument.field("q", "nothing to search for (words need 2 or more letters)")
    if len(unique) > MAX_TERMS:
        raise InvalidArgument.field("q", f"at most {MAX_TERMS} terms")
    return [f"{tenant}|{t}" for t in unique]


class ProvenanceSearch:
    """Search one tenant's provenance items."""

    def __init__(self, pool: Pool, token_key: bytes) -> None:
        self._pool = pool
        self._token_key = token_key

    async def search(
        self,
        tenant: str,
        q: str,
        *,
        kinds: Sequence[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        now: datetime | None = None,
    ) -> tuple[list[Hit], str]:
        now = now or datetime.now(UTC)
        keys = terms(tenant, q)
        binding = self._binding(tenant, q, kinds, since, until)
        until = until or now
        since = since or (until - DEFAULT_WINDOW)
        if since < now - MAX_WINDOW:
            raise InvalidArgument.field("since", "at most 180 days ago")
        if until < since:
            raise InvalidArgument.field("until", "is before since")
        size = page_size or DEFAULT_PAGE
        after = self._decode(page_token, binding) if page_token else None
        conditions = [
            "keys @> %(keys)s",
            "tenant = %(tenant)s",
            "at >= %(since)s",
            "at <= %(until)s",
        ]
        params: dict[str, object] = {
            "keys": keys, "tenant": tenant, "since": since, "until": until, "limit": size + 1
        }  # fmt: skip
        if kinds:
            conditions.append("kind = ANY(%(kinds)s)")
            params["kinds"] = list(kinds)
        if after is not None:
            conditions.append("(at, kind, ref) < (%(at)s, %(kind)s, %(ref)s)")
            params.update(after)
        statement = (
            "SELECT kind, ref, at, title FROM search_entries WHERE "
            + " AND ".join(conditions)
            + " ORDER BY at DESC, kind DESC, ref DESC LIMIT %(limit)s"
        )
        async with self._pool.connection() as conn:
            cursor = await conn.execute(statement, params)  # type: ignore[arg-type]
            rows = await cursor.fetchall()
        hits = [Hit(kind, ref, at, title) for kind, ref, at, title in rows[:size]]
        token = ""
        if len(rows) > size:
            last = hits[-1]
            token = self._encode(
                {"at": last.at.isoformat(), "kind": last.kind, "ref": last.ref}, binding
            )
        return hits, token

    def _binding(
        self,
        tenant: str,
        q: str,
        kinds: Sequence[str],
        since: datetime | None,
        until: datetime | None,
    ) -> bytes:
        """What a page token is bound to: the request as the caller sent it."""
        stamps = [t.isoformat() if t else "" for t in (since, until)]
        scope = json.dumps([tenant, q, sorted(kinds), *stamps])
        return hashlib.sha256(scope.encode()).digest()

    def _encode(self, position: dict[str, str], binding: bytes) -> str:
        body = json.dumps(position, separators=(",", ":")).encode()
        mac = hmac.new(self._token_key, binding + body, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")

    def _decode(self, token: str, binding: bytes) -> dict[str, object]:
        bad = InvalidArgument.field("page_token", "not a page token of this search")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise bad from None
        mac, body = raw[:16], raw[16:]
        expected = hmac.new(self._token_key, binding + body, hashlib.sha256).digest()[:16]
        if len(mac) != 16 or not hmac.compare_digest(mac, expected):
            raise bad
        position = json.loads(body)
        return {
            "at": datetime.fromisoformat(position["at"]),
            "kind": str(position["kind"]),
            "ref": str(position["ref"]),
        }
