"""The cost estimator: how many rows a plan would read, from Postgres' table statistics.

A snapshot of the statistics PQL needs (each table's live row count, the tenant column's most
common values and frequencies, the time column's histogram) is read in one query and kept for
`refresh_s` seconds, so an estimate costs no database round trip: the cost guard runs in
microseconds, before any query is sent. Every PQL statement reads one tenant's rows within one
time window through the (tenant, time) index, so the rows it reads are about

    rows(table) x share of the tenant x share of the window

which is what `estimate` computes (summed over joined tables, doubled for per-row subqueries).
It is an upper bound for filters PQL cannot use an index for, which is what a guard wants.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from mc_common.db import Pool
from mc_pql.query.catalog import SUBJECTS

_TABLES: Final = {s.table: s.time_field for s in SUBJECTS.values()}


@dataclass(frozen=True, slots=True)
class TableStats:
    """What the estimator knows about one table."""

    rows: float
    tenant_freqs: Mapping[str, float]
    other_tenant_freq: float
    time_bounds: Sequence[datetime]

    def tenant_share(self, tenant: str) -> float:
        return self.tenant_freqs.get(tenant, self.other_tenant_freq)

    def window_share(self, start: datetime) -> float:
        """Share of rows at or after `start`, from the time histogram (1.0 without one)."""
        bounds = self.time_bounds
        if len(bounds) < 2:
            return 1.0
        if start <= bounds[0]:
            return 1.0
        if start >= bounds[-1]:
            return 1.0 / (len(bounds) - 1)  # the newest bucket at least: rows keep arriving
        i = bisect.bisect_right(bounds, start) - 1
        low, high = bounds[i], bounds[i + 1]
        span = (high - low).total_seconds() or 1.0
        inside = (high - start).total_seconds() / span
        return (len(bounds) - 1 - i - 1 + inside) / (len(bounds) - 1)


@dataclass
class Statistics:
    """A refreshed-on-demand snapshot of table statistics (see module docstring)."""

    pool: Pool
    refresh_s: float = 60.0
    _tables: dict[str, TableStats] = field(default_factory=dict)
    _loaded_at: float = float("-inf")
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def table(self, name: str) -> TableStats:
        if time.monotonic() - self._loaded_at > self.refresh_s:
            async with self._lock:
                if time.monotonic() - self._loaded_at > self.refresh_s:
                    self._tables = await _load(self.pool)
                    self._loaded_at = time.monotonic()
        return self._tables.get(name, TableStats(0.0, {}, 0.0, ()))

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")


async def _load(pool: Pool) -> dict[str, TableStats]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            """
            SELECT c.relname, greatest(c.reltuples, coalesce(s.n_live_tup, 0))::float8
            FROM pg_class AS c
            JOIN pg_namespace AS n ON n.oid = c.relnamespace AND n.nspname = current_schema()
            LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
            WHERE c.relname = ANY(%(tables)s)
            """,
            {"tables": list(_TABLES)},
        )
        counts = {name: rows for name, rows in await cursor.fetchall()}
        cursor = await conn.execute(
            """
            SELECT tablename, attname, n_distinct::float8, most_common_vals::text,
                   most_common_freqs, histogram_bounds::text
            FROM pg_stats
            WHERE schemaname = current_schema() AND tablename = ANY(%(tables)s)
              AND attname IN ('tenant', 'recorded_at', 'decided_at')
            """,
            {"tables": list(_TABLES)},
        )
        columns = {
            (t, a): (nd, mcv, freqs, hist) for t, a, nd, mcv, freqs, hist in await cursor.fetchall()
        }
    out: dict[str, TableStats] = {}
    for table, time_field in _TABLES.items():
        rows = max(counts.get(table, 0.0), 0.0)
        freqs: dict[str, float] = {}
        other = 1.0
        tenant = columns.get((table, "tenant"))
        if tenant is not None:
            n_distinct, mcv, mcf, _ = tenant
            values = _array(mcv)
            freqs = dict(zip(values, [float(f) for f in (mcf or [])], strict=False))
            distinct = n_distinct if n_distinct > 0 else -n_distinct * rows
            rest = max(distinct - len(freqs), 1.0)
            other = max(1.0 - sum(freqs.values()), 0.0) / rest
        bounds: list[datetime] = []
        timing = columns.get((table, time_field))
        if timing is not None and timing[3]:
            bounds = sorted(_timestamp(v) for v in _array(timing[3]))
        out[table] = TableStats(rows, freqs, other, bounds)
    return out


def _array(text: Any) -> list[str]:
    """Elements of a Postgres array literal `{a,"b c"}` (anyarray comes back as text)."""
    if not text:
        return []
    body = str(text)[1:-1]
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in body:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return items


def _timestamp(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
