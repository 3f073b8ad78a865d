"""Run PQL queries against the provenance store: estimate, refuse or run, cache, stream.

A query is first priced by the cost estimator (`stats`: rows it would read, from a snapshot of
Postgres' table statistics, no round trip) and refused before anything is sent when too
costly. It then runs in a READ ONLY transaction under a statement timeout, pipelined so that
the guard settings and the statement share one network round trip. Results are cached per
tenant data version (`cache`). `explain` also asks Postgres for its plan (EXPLAIN, not run).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import psycopg
from prometheus_client import CollectorRegistry, Histogram
from psycopg import sql

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.db import Pool
from mc_pql.query.cache import ResultCache
from mc_pql.query.errors import QueryRejected
from mc_pql.query.parser import GRAMMAR_VERSION, parse
from mc_pql.query.planner import DEFAULT_ROW_CAP, Column, ParamValue, Plan, plan
from mc_pql.query.stats import Statistics

MAX_PARAMS: Final = 64
_GUARD: Final = (
    "SELECT set_config('transaction_read_only', 'on', true),"
    " set_config('statement_timeout', %s, true)"
)
Value = str | int | float | bool | datetime | timedelta | None


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """The guardrails an operator sets (settings `MC_PQL_QUERY_*`)."""

    row_cap: int = DEFAULT_ROW_CAP
    max_cost: float = 1_000_000.0
    """Most rows a query may read (the estimator's unit)."""
    statement_timeout_ms: int = 5_000
    cache_entries: int = 1024
    cache_ttl_s: float = 300.0
    cache_max_rows: int = 200_000
    """Most rows held by the result cache in total (a result counts its rows)."""


@dataclass(frozen=True, slots=True)
class Estimate:
    """The cost estimator's price of a plan: the rows it would read (`cost`), the rows it
    would return without the row cap (`rows`, an upper bound), the costliest table, and how
    long the estimate took. `plan` is Postgres' own plan, only filled by `explain`."""

    cost: float
    rows: int
    heaviest: str
    ms: float
    plan: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Rows of a query, and what bounded them. `truncated` is never silent: when set, more
    rows matched than `len(rows)` and `total_estimate` says about how many."""

    columns: tuple[Column, ...]
    rows: tuple[tuple[Value, ...], ...]
    truncated: bool
    total_estimate: int
    estimate: Estimate
    guardrails: tuple[str, ...]
    cached: bool = False
    elapsed_ms: float = 0.0
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Encodings of this result made once and shared by its cached copies (the reply proto)."""


@dataclass(frozen=True, slots=True)
class Explanation:
    """What a query would do: the SQL it compiles to, Postgres' plan and estimate, the
    guardrails that applied, and whether the cost guard would let it run."""

    sql: str
    params: dict[str, str]
    estimate: Estimate
    guardrails: tuple[str, ...]
    accepted: bool
    rejection: str
    grammar_version: str = GRAMMAR_VERSION


@dataclass
class _Prepared:
    plan: Plan
    key: tuple[Any, ...]
    guardrails: list[str] = field(default_factory=list)


class QueryEngine:
    """Plans and runs PQL for one tenant at a time; safe to share across requests."""

    def __init__(
        self,
        pool: Pool,
        limits: QueryLimits | None = None,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._pool = pool
        self.limits = limits or QueryLimits()
        registry = registry if registry is not None else CollectorRegistry()
        self.cache: ResultCache[QueryResult] = ResultCache(
            self.limits.cache_entries,
            self.limits.cache_ttl_s,
            max_weight=self.limits.cache_max_rows,
            registry=registry,
        )
        self.stats = Statistics(pool)
        self._seconds = Histogram(
            "mc_pql_query_seconds",
            "PQL query latency by phase (estimate, execute) on cache misses.",
            ["phase"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )

    def compile(
        self, tenant: str, text: str, params: Mapping[str, ParamValue] | None = None
    ) -> Plan:
        """Parse and plan `text` for `tenant` (no database access)."""
        if params is not None and len(params) > MAX_PARAMS:
            raise QueryRejected(
                f"at most {MAX_PARAMS} parameters",
                reason=ErrorReason.ERROR_REASON_PQL_TOO_MANY_PARAMS,
                guardrail="params",
            )
        return plan(parse(text), tenant=tenant, params=params, row_cap=self.limits.row_cap)

    async def run(
        self, tenant: str, text: str, params: Mapping[str, ParamValue] | None = None
    ) -> QueryResult:
        """Run a query (or serve it from the cache); raise `QueryRejected` when the cost guard
        or the statement timeout refuses it."""
        started = time.perf_counter()
        compiled = self.compile(tenant, text, params)
        caching = self.limits.cache_entries > 0
        # One pipelined transaction: BEGIN and the version read share a round trip, the guard
        # settings and the statement share the next.
        async with self._pool.connection() as conn, conn.pipeline(), conn.transaction():
            key: tuple[Any, ...] = ()
            if caching:
                version = await _tenant_version(conn, tenant)
                key = (tenant, version, text, _params_key(params), compiled.row_cap)
                cached = self.cache.get(key)
                if cached is not None:
                    return QueryResult(
                        **{**_fields(cached), "cached": True, "elapsed_ms": _ms(started)}
                    )
            estimate = await self.estimate(compiled)
            self._check_cost(estimate)
            t0 = time.perf_counter()
            rows = await self._fetch(conn, compiled)
            self._seconds.labels("execute").observe(time.perf_counter() - t0)
        truncated = compiled.capped and len(rows) > compiled.row_cap
        rows = rows[: compiled.row_cap]
        result = QueryResult(
            columns=compiled.columns,
            rows=tuple(rows),
            truncated=truncated,
            total_estimate=max(estimate.rows, len(rows)) if truncated else len(rows),
            estimate=estimate,
            guardrails=compiled.guardrails,
            elapsed_ms=_ms(started),
        )
        if caching:
            self.cache.put(key, result, weight=max(len(rows), 1))
        return result

    async def estimate(self, compiled: Plan) -> Estimate:
        """Price `compiled` from the statistics snapshot (see `stats`)."""
        t0 = time.perf_counter()
        read = 0.0
        heaviest = (-1.0, "")
        for scan in compiled.scans:
            table = await self.stats.table(scan.table)
            rows = table.rows * table.tenant_share(compiled.tenant) * table.window_share(scan.start)
            read += rows
            if rows > heaviest[0]:
                heaviest = (rows, f"{scan.table} (~{int(rows)} rows of the tenant in the window)")
        returned = read
        if not compiled.aggregated and not compiled.filtered and len(compiled.scans) == 1:
            read = min(read, compiled.row_cap + 1.0)  # newest first through the index: stops
        if compiled.per_row_subquery:
            read *= 2
        elapsed = time.perf_counter() - t0
        self._seconds.labels("estimate").observe(elapsed)
        return Estimate(
            cost=read, rows=int(returned), heaviest=heaviest[1] or "nothing", ms=elapsed * 1000
        )

    async def explain(
        self, tenant: str, text: str, params: Mapping[str, ParamValue] | None = None
    ) -> Explanation:
        """Explain a query without running it."""
        compiled = self.compile(tenant, text, params)
        estimate = await self.estimate(compiled)
        async with self._pool.connection() as conn, conn.transaction():
            await self._guard(conn)
            plan_doc = await _postgres_plan(conn, compiled)
            statement = compiled.statement.as_string(conn)
        estimate = replace(estimate, plan=plan_doc)
        rejection = ""
        try:
            self._check_cost(estimate)
        except QueryRejected as exc:
            rejection = exc.message
        return Explanation(
            sql=statement,
            params={k: _param_text(v) for k, v in compiled.params.items()},
            estimate=estimate,
            guardrails=(
                *compiled.guardrails,
                f"tenant scope: every table is filtered to tenant {tenant!r}",
                f"row cap: at most {compiled.row_cap} rows (truncation is flagged)",
                f"window: SINCE {int(compiled.window.total_seconds() // 86400)}d or less "
                f"(at most 180d)",
                f"cost guard: about {estimate.cost:.0f} rows read, of at most "
                f"{self.limits.max_cost:.0f}",
                f"statement timeout: {self.limits.statement_timeout_ms} ms, read-only",
            ),
            accepted=not rejection,
            rejection=rejection,
        )

    async def export_csv(
        self, tenant: str, text: str, params: Mapping[str, ParamValue] | None = None
    ) -> AsyncIterator[bytes | QueryResult]:
        """Stream a query's result as CSV: the header, then rows in chunks of about 64 KiB,
        and finally the `QueryResult` (without rows) whose `truncated` flag the caller puts in
        the trailer. The same guards apply as to `run`."""
        compiled = self.compile(tenant, text, params)
        estimate = await self.estimate(compiled)
        self._check_cost(estimate)
        async with self._pool.connection() as conn, conn.transaction():
            await self._guard(conn)
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow([c.name for c in compiled.columns])
            count = 0
            truncated = False
            async with conn.cursor(name="pql_export") as cursor:
                await cursor.execute(compiled.statement, compiled.params)
                async for row in cursor:
                    if count == compiled.row_cap:
                        truncated = compiled.capped
                        break
                    writer.writerow([_csv_cell(v) for v in row])
                    count += 1
                    if buffer.tell() >= 65536:
                        yield buffer.getvalue().encode()
                        buffer.seek(0)
                        buffer.truncate()
            if buffer.tell():
                yield buffer.getvalue().encode()
        yield QueryResult(
            columns=compiled.columns,
            rows=(),
            truncated=truncated,
            total_estimate=max(estimate.rows, count) if truncated else count,
            estimate=estimate,
            guardrails=compiled.guardrails,
        )

    async def _guard(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(_GUARD, (str(self.limits.statement_timeout_ms),))

    async def _fetch(
        self, conn: psycopg.AsyncConnection[Any], compiled: Plan
    ) -> list[tuple[Value, ...]]:
        """Run the statement read-only under the timeout (inside the caller's transaction)."""
        try:
            await self._guard(conn)
            cursor = await conn.execute(compiled.statement, compiled.params)
            rows = await cursor.fetchall()
        except psycopg.errors.QueryCanceled as exc:
            raise QueryRejected(
                "query stopped at the statement timeout; narrow it (shorter SINCE, more filters)",
                reason=ErrorReason.ERROR_REASON_PQL_TIMEOUT,
                guardrail="statement_timeout",
            ) from exc
        return [tuple(_value(v) for v in row) for row in rows]

    def _check_cost(self, estimate: Estimate) -> None:
        if estimate.cost <= self.limits.max_cost:
            return
        raise QueryRejected(
            f"query refused before running: it would read about {estimate.cost:.0f} rows, more "
            f"than the limit of {self.limits.max_cost:.0f} (the most from {estimate.heaviest}); "
            "narrow it: a shorter SINCE, a filter on package, execution_id, digest or decision, "
            "or a TOP k",
            reason=ErrorReason.ERROR_REASON_PQL_TOO_COSTLY,
            guardrail="cost",
            metadata={
                "estimated_cost": f"{estimate.cost:.0f}",
                "max_cost": f"{self.limits.max_cost:.0f}",
                "estimated_rows": str(estimate.rows),
            },
        )


async def _tenant_version(conn: psycopg.AsyncConnection[Any], tenant: str) -> int:
    cursor = await conn.execute(
        "SELECT version FROM query_tenant_versions WHERE tenant = %s", (tenant,)
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _postgres_plan(conn: psycopg.AsyncConnection[Any], compiled: Plan) -> dict[str, Any]:
    cursor = await conn.execute(
        sql.SQL("EXPLAIN (FORMAT JSON) {}").format(compiled.statement), compiled.params
    )
    row = await cursor.fetchone()
    assert row is not None
    document = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return dict(document[0]["Plan"])


def _value(value: object) -> Value:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value  # type: ignore[return-value]


def _csv_cell(value: object) -> str:
    value = _value(value)
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _param_text(value: object) -> str:
    return _csv_cell(value) if not isinstance(value, list) else json.dumps(value)


def _params_key(params: Mapping[str, ParamValue] | None) -> str:
    return json.dumps(dict(params or {}), sort_keys=True, default=str)


def _fields(result: QueryResult) -> dict[str, Any]:
    return {name: getattr(result, name) for name in QueryResult.__dataclass_fields__}


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


__all__: Sequence[str] = ["Explanation", "QueryEngine", "QueryLimits", "QueryResult"]
