"""Provenance search (MC-PRX-931/932): receipts, decisions and executions by digest, task
(step) name, decision rule, package, execution id and free words, newest first.

Every searchable item has a row in `search_entries` whose `keys` hold tenant-prefixed terms
(`<tenant>|<kind>:<value>`), written by triggers in the same transaction as the item (migration
0003). A search is one `keys @> terms` lookup on a GIN index, so it reads only the caller's
tenant's postings, and keyset pagination keeps every page as cheap as the first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from mc_common.db import Pool
from mc_common.errors import InvalidArgument
from mc_common.pagetokens import PageTokenError, PageTokens

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

    def __init__(self, pool: Pool, page_tokens: PageTokens) -> None:
        self._pool = pool
        self._tokens = page_tokens

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
        filters = _filters(q, kinds, since, until)
        until = until or now
        since = since or (until - DEFAULT_WINDOW)
        if since < now - MAX_WINDOW:
            raise InvalidArgument.field("since", "at most 180 days ago")
        if until < since:
            raise InvalidArgument.field("until", "is before since")
        size = page_size or DEFAULT_PAGE
        position = self._tokens.open(page_token, tenant=tenant, listing="search", filters=filters)
        after = _after(position) if position is not None else None
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
            token = self._tokens.issue(
                [last.at.isoformat(), last.kind, last.ref],
                tenant=tenant,
                listing="search",
                filters=filters,
            )
        return hits, token


def _filters(
    q: str, kinds: Sequence[str], since: datetime | None, until: datetime | None
) -> dict[str, str | int]:
    """What a page token is bound to: the request as the caller sent it."""
    return {
        "q": q,
        "kinds": ",".join(sorted(kinds)),
        "since": since.isoformat() if since else "",
        "until": until.isoformat() if until else "",
    }


def _after(position: list[str | int]) -> dict[str, object]:
    if len(position) != 3 or not all(isinstance(p, str) for p in position):
        raise PageTokenError()
    try:
        at = datetime.fromisoformat(str(position[0]))
    except ValueError:
        raise PageTokenError() from None
    return {"at": at, "kind": position[1], "ref": position[2]}
