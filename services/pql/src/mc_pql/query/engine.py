"""Run PQL queries against the provenance store: estimate, refuse or run, cache, stream.

Every query runs in a READ ONLY transaction under a statement timeout, on one pooled
connection: first `EXPLAIN` (Postgres' estimate from its table statistics) decides whether the
plan is affordable, then the statement runs. Results are cached per tenant data version.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
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

MAX_PARAMS: Final = 64
Value = str | int | float | bool | datetime | timedelta | None


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """The guardrails an operator sets (settings `MC_PQL_QUERY_*`)."""

    row_cap: int = DEFAULT_ROW_CAP
    max_cost: float = 250_000.0
    statement_timeout_ms: int = 5_000
    cache_entries: int = 1024
    cache_ttl_s: float = 300.0
    cache_max_rows: int = 2_000


@dataclass(frozen=True, slots=True)
class Estimate:
    """Postgres' estimate of a plan: its total cost (planner units) and the rows the query
    would return without the row cap, plus the costliest scan, for the explanation."""

    cost: float
    rows: int
    heaviest: str
    plan: dict[str, Any]
    ms: float


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
            self.limits.cache_entries, self.limits.cache_ttl_s, registry=registry
        )
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
        async with self._pool.connection() as conn, conn.transaction():
            await self._guard(conn)
            version = await _tenant_version(conn, tenant)
            key = (tenant, version, text, _params_key(params), compiled.row_cap)
            cached = self.cache.get(key)
            if cached is not None:
                return QueryResult(
                    **{**_fields(cached), "cached": True, "elapsed_ms": _ms(started)}
                )
            estimate = await self._estimate(conn, compiled)
            self._check_cost(estimate)
            t0 = time.perf_counter()
            rows = await _fetch(conn, compiled)
            self._seconds.labels("execute").observe(time.perf_counter() - t0)
        truncated = len(rows) > compiled.row_cap
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
        if len(rows) <= self.limits.cache_max_rows:
            self.cache.put(key, result)
        return result

    async def explain(
        self, tenant: str, text: str, params: Mapping[str, ParamValue] | None = None
    ) -> Explanation:
        """Explain a query without running it."""
        compiled = self.compile(tenant, text, params)
        async with self._pool.connection() as conn, conn.transaction():
            await self._guard(conn)
            estimate = await self._estimate(conn, compiled)
            statement = compiled.statement.as_string(conn)
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
                f"cost guard: estimated cost {estimate.cost:.0f} of at most "
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
        async with self._pool.connection() as conn, conn.transaction():
            await self._guard(conn)
            estimate = await self._estimate(conn, compiled)
            self._check_cost(estimate)
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow([c.name for c in compiled.columns])
            count = 0
            truncated = False
            async with conn.cursor(name="pql_export") as cursor:
                await cursor.execute(compiled.statement, compiled.params)
                async for row in cursor:
                    if count == compiled.row_cap:
                        truncated = True
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
        await conn.execute("SET TRANSACTION READ ONLY")
        await conn.execute(
            "SELECT set_config('statement_timeout', %s, true)",
            (str(self.limits.statement_timeout_ms),),
        )

    async def _estimate(self, conn: psycopg.AsyncConnection[Any], compiled: Plan) -> Estimate:
        t0 = time.perf_counter()
        cursor = await conn.execute(
            sql.SQL("EXPLAIN (FORMAT JSON) {}").format(compiled.statement), compiled.params
        )
        row = await cursor.fetchone()
        assert row is not None
        document = row[0] if not isinstance(row[0], str) else json.loads(row[0])
        top: dict[str, Any] = document[0]["Plan"]
        inner = top["Plans"][0] if top.get("Node Type") == "Limit" and top.get("Plans") else top
        elapsed = time.perf_counter() - t0
        self._seconds.labels("estimate").observe(elapsed)
        return Estimate(
            cost=float(top["Total Cost"]),
            rows=int(inner.get("Plan Rows", 0)),
            heaviest=_heaviest_scan(top),
            plan=top,
            ms=elapsed * 1000,
        )

    def _check_cost(self, estimate: Estimate) -> None:
        if estimate.cost <= self.limits.max_cost:
            return
        raise QueryRejected(
            f"query refused before running: estimated cost {estimate.cost:.0f} exceeds the "
            f"limit of {self.limits.max_cost:.0f} (the heaviest step is {estimate.heaviest}); "
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


async def _fetch(conn: psycopg.AsyncConnection[Any], compiled: Plan) -> list[tuple[Value, ...]]:
    try:
        cursor = await conn.execute(compiled.statement, compiled.params)
    except psycopg.errors.QueryCanceled as exc:
        raise QueryRejected(
            "query stopped at the statement timeout; narrow it (shorter SINCE, more filters)",
            reason=ErrorReason.ERROR_REASON_PQL_TIMEOUT,
            guardrail="statement_timeout",
        ) from exc
    return [tuple(_value(v) for v in row) for row in await cursor.fetchall()]


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


def _heaviest_scan(node: Mapping[str, Any]) -> str:
    best: tuple[float, str] = (-1.0, "the plan")

    def walk(n: Mapping[str, Any]) -> None:
        nonlocal best
        kind = str(n.get("Node Type", ""))
        if "Scan" in kind:
            cost = float(n.get("Total Cost", 0.0))
            if cost > best[0]:
                relation = n.get("Relation Name", "")
                index = n.get("Index Name")
                what = f"{kind} on {relation}" + (f" using {index}" if index else "")
                best = (cost, f"{what} (~{int(n.get('Plan Rows', 0))} rows)")
        for child in n.get("Plans", ()):
            walk(child)

    walk(node)
    return best[1]


def _fields(result: QueryResult) -> dict[str, Any]:
    return {name: getattr(result, name) for name in QueryResult.__dataclass_fields__}


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


__all__: Sequence[str] = ["Explanation", "QueryEngine", "QueryLimits", "QueryResult"]
