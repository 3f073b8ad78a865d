"""Check a parsed query against the catalog and the guardrails, and compile it to one
parameterized SQL statement scoped to the caller's tenant.

Safety by construction: identifiers come only from the catalog, every value is a bound
parameter, every table reference carries `tenant = %(tenant)s` and a time window, the only join
is receipts <-> decisions on execution_id (and tenant), and every statement has a LIMIT.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from psycopg import sql

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_pql.query.ast import (
    Aggregate,
    And,
    Compare,
    FieldRef,
    InList,
    Not,
    Operand,
    Or,
    Param,
    Predicate,
    Query,
)
from mc_pql.query.catalog import BUCKET_WIDTHS, JOIN_KEY, JOINABLE, SUBJECTS, Field, Subject
from mc_pql.query.errors import PqlSemanticError
from mc_pql.query.lexer import DURATION_UNITS

MAX_SINCE: Final = timedelta(days=180)
DEFAULT_SINCE: Final = timedelta(days=7)
DEFAULT_ROW_CAP: Final = 10_000
_INT64: Final = (-(2**63), 2**63 - 1)
_NUMERIC: Final = ("int", "float", "duration")
_ORDERED: Final = ("int", "float", "duration", "time", "str")

ParamValue = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Column:
    """One result column: its name and PQL type (`str`, `int`, `float`, `bool`, `time`,
    `duration`)."""

    name: str
    type: str


@dataclass(frozen=True, slots=True)
class Scan:
    """One table a plan reads: the caller's rows from `start` on (for the cost estimator)."""

    table: str
    start: datetime


@dataclass(frozen=True, slots=True)
class Plan:
    """A compiled query: the statement, its parameters and what the guardrails did.

    `statement` selects at most `row_cap + 1` rows when the row cap bounds it (`capped`), so
    the engine can tell a truncated result from a complete one without a second query; a
    smaller LIMIT or TOP k selects exactly that many (never reported as truncated).
    """

    subject: str
    statement: sql.Composed
    params: dict[str, object]
    columns: tuple[Column, ...]
    row_cap: int
    window: timedelta
    guardrails: tuple[str, ...]
    aggregated: bool
    scans: tuple[Scan, ...] = ()
    tenant: str = ""
    capped: bool = True
    filtered: bool = False
    per_row_subquery: bool = False


@dataclass
class _Builder:
    tenant: str
    now: datetime
    values: Mapping[str, ParamValue]
    params: dict[str, object] = field(default_factory=dict)
    guardrails: list[str] = field(default_factory=list)
    subquery: bool = False

    def bind(self, value: object) -> sql.Composable:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return sql.Placeholder(name)


def plan(
    query: Query,
    *,
    tenant: str,
    params: Mapping[str, ParamValue] | None = None,
    now: datetime | None = None,
    row_cap: int = DEFAULT_ROW_CAP,
) -> Plan:
    """Compile `query` for `tenant`; raise `PqlSemanticError` (INVALID_ARGUMENT) when it names
    something unknown, mixes types, lacks a parameter or breaks a guardrail."""
    if not tenant:
        raise PqlSemanticError(
            "a query needs the caller's tenant", reason=ErrorReason.ERROR_REASON_TENANT_REQUIRED
        )
    b = _Builder(tenant=tenant, now=now or datetime.now(UTC), values=params or {})
    base = _subject(query.subject, "query")
    joined = _join(query, base)
    scope = _Scope(base, joined)

    window = query.since or DEFAULT_SINCE
    if query.since is None:
        b.guardrails.append(f"SINCE {_fmt(DEFAULT_SINCE)} applied (no SINCE given)")
    if window > MAX_SINCE:
        raise PqlSemanticError(
            f"SINCE {_fmt(window)} is longer than the maximum of {_fmt(MAX_SINCE)}",
            field="since",
            reason=ErrorReason.ERROR_REASON_PQL_WINDOW_TOO_LONG,
        )
    if window <= timedelta(0):
        raise PqlSemanticError(
            "SINCE must be positive", field="since", reason=ErrorReason.ERROR_REASON_PQL_INVALID
        )
    start = b.now - window

    aggregates = query.aggregates
    grouped = bool(query.group_by) or query.bucket is not None
    if grouped and not aggregates:
        aggregates = (Aggregate("COUNT", None, base.name, query.subject_pos),)
        b.guardrails.append(f"COUNT({base.name}) selected (GROUP BY / BUCKET BY without one)")
    for agg in aggregates:
        _check_aggregate(agg, scope)

    select: list[sql.Composable] = []
    columns: list[Column] = []
    group_exprs: list[sql.Composable] = []
    if query.bucket is not None:
        if query.bucket not in BUCKET_WIDTHS:
            raise PqlSemanticError(
                f"BUCKET BY {_fmt(query.bucket)} is not supported; use 1m, 5m, 1h or 1d",
                field="bucket",
                reason=ErrorReason.ERROR_REASON_PQL_BUCKET,
            )
        expr: sql.Composable = sql.SQL(
            "date_bin({}, {}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
        ).format(b.bind(query.bucket), _time_sql(base))
        select.append(sql.SQL("{} AS {}").format(expr, sql.Identifier("bucket")))
        columns.append(Column("bucket", "time"))
        group_exprs.append(expr)
    for ref in query.group_by:
        subject, f = scope.resolve(ref)
        if f.member:
            raise PqlSemanticError(
                f"{ref.text()} holds a list and cannot be grouped", field="group_by"
            )
        expr = _field_sql(subject, f, b)
        name = scope.label(subject, f)
        select.append(sql.SQL("{} AS {}").format(expr, sql.Identifier(name)))
        columns.append(Column(name, f.type))
        group_exprs.append(expr)
    agg_sql: dict[str, sql.Composable] = {}
    for agg in aggregates:
        expr, ctype = _aggregate_sql(agg, scope, b)
        agg_sql[agg.text()] = expr
        select.append(sql.SQL("{} AS {}").format(expr, sql.Identifier(agg.text())))
        columns.append(Column(agg.text(), ctype))
    if not aggregates:
        for subject in scope.subjects():
            for name in subject.row_fields:
                f = subject.fields[name]
                label = scope.label(subject, f)
                select.append(
                    sql.SQL("{} AS {}").format(_field_sql(subject, f, b), sql.Identifier(label))
                )
                columns.append(Column(label, f.type))

    conditions: list[sql.Composable] = []
    for subject in scope.subjects():
        alias = sql.Identifier(subject.alias)
        conditions.append(sql.SQL("{}.tenant = {}").format(alias, b.bind(tenant)))
        conditions.append(sql.SQL("{} >= {}").format(_time_sql(subject), b.bind(start)))
    if query.where is not None:
        conditions.append(_predicate(query.where, scope, b))

    from_clause: sql.Composable = sql.SQL("{} {}").format(
        sql.Identifier(base.table), sql.Identifier(base.alias)
    )
    if joined is not None:
        from_clause = sql.SQL("{} JOIN {} {} ON {}.tenant = {}.tenant AND {}.{} = {}.{}").format(
            from_clause,
            sql.Identifier(joined.table),
            sql.Identifier(joined.alias),
            sql.Identifier(joined.alias),
            sql.Identifier(base.alias),
            sql.Identifier(joined.alias),
            sql.Identifier(JOIN_KEY),
            sql.Identifier(base.alias),
            sql.Identifier(JOIN_KEY),
        )

    order: sql.Composable
    limit = row_cap
    if query.limit is not None:
        if query.limit > row_cap:
            b.guardrails.append(f"LIMIT {query.limit} capped at the row cap of {row_cap}")
        limit = min(query.limit, row_cap)
    if query.top is not None:
        limit = min(limit, query.top.k)
        by = query.top.by
        if isinstance(by, Aggregate):
            if not aggregates:
                raise PqlSemanticError(
                    f"TOP ... BY {by.text()} needs the aggregate in FIND", field="top"
                )
            if by.text() not in agg_sql:
                _check_aggregate(by, scope)
                expr, _ = _aggregate_sql(by, scope, b)
            else:
                expr = agg_sql[by.text()]
        else:
            subject, f = scope.resolve(by)
            if f.member or f.type not in _ORDERED:
                raise PqlSemanticError(f"TOP ... BY {by.text()}: cannot order by it", field="top")
            if aggregates and not _in_group(by, query, scope):
                raise PqlSemanticError(
                    f"TOP ... BY {by.text()}: with aggregates, order by an aggregate or a "
                    "GROUP BY field",
                    field="top",
                )
            expr = _field_sql(subject, f, b)
        order = sql.SQL("{} DESC NULLS LAST").format(expr)
    elif aggregates:
        order = (
            sql.SQL(", ").join(sql.SQL(str(i + 1)) for i in range(len(group_exprs)))
            if group_exprs
            else sql.SQL("1")
        )
    else:
        order = sql.SQL("{} DESC").format(_time_sql(base))

    statement = sql.SQL("SELECT {} FROM {} WHERE {}").format(
        sql.SQL(", ").join(select), from_clause, sql.SQL(" AND ").join(conditions)
    )
    if group_exprs:
        statement = sql.SQL("{} GROUP BY {}").format(
            statement, sql.SQL(", ").join(sql.SQL(str(i + 1)) for i in range(len(group_exprs)))
        )
    # Only the row cap truncates: one row more than it tells a cut result from a complete one.
    # A LIMIT or TOP k below the cap is the answer the caller asked for, not a truncation.
    capped = limit == row_cap
    statement = sql.SQL("{} ORDER BY {} LIMIT {}").format(
        statement, order, b.bind(limit + 1 if capped else limit)
    )
    return Plan(
        subject=base.name,
        statement=statement,
        params=b.params,
        columns=tuple(columns),
        row_cap=limit,
        window=window,
        capped=capped,
        guardrails=tuple(b.guardrails),
        aggregated=bool(aggregates),
        scans=tuple(Scan(s.table, start) for s in scope.subjects()),
        tenant=tenant,
        filtered=query.where is not None,
        per_row_subquery=b.subquery,
    )


class _Scope:
    def __init__(self, base: Subject, joined: Subject | None) -> None:
        self.base = base
        self.joined = joined

    def subjects(self) -> list[Subject]:
        return [self.base] + ([self.joined] if self.joined else [])

    def label(self, subject: Subject, f: Field) -> str:
        return f"{subject.name}.{f.name}" if self.joined else f.name

    def resolve(self, ref: FieldRef) -> tuple[Subject, Field]:
        names = [s.name for s in self.subjects()]
        if ref.subject is not None and ref.subject not in names and ref.subject not in SUBJECTS:
            # `label.team`: a dotted field name, not subject.field
            ref = FieldRef(None, f"{ref.subject}.{ref.name}", ref.pos)
        if ref.subject is not None:
            candidates = [s for s in self.subjects() if s.name == ref.subject]
            if not candidates:
                raise PqlSemanticError(
                    f"line {ref.pos.line}, column {ref.pos.column}: subject {ref.subject!r} is "
                    f"not in this query (it reads {', '.join(s.name for s in self.subjects())})",
                    reason=ErrorReason.ERROR_REASON_PQL_UNKNOWN_FIELD,
                )
        else:
            candidates = self.subjects()
        for subject in candidates:
            f = subject.lookup(ref.name)
            if f is not None:
                return subject, f
        known = sorted({n for s in candidates for n in s.fields})
        raise PqlSemanticError(
            f"line {ref.pos.line}, column {ref.pos.column}: unknown field {ref.text()!r}; "
            f"fields: {', '.join(known)}",
            reason=ErrorReason.ERROR_REASON_PQL_UNKNOWN_FIELD,
        )


def _subject(name: str, where: str) -> Subject:
    subject = SUBJECTS.get(name)
    if subject is None:
        raise PqlSemanticError(
            f"unknown subject {name!r}; subjects: {', '.join(SUBJECTS)}",
            field=where,
            reason=ErrorReason.ERROR_REASON_PQL_UNKNOWN_SUBJECT,
        )
    return subject


def _join(query: Query, base: Subject) -> Subject | None:
    if query.join is None:
        return None
    joined = _subject(query.join.subject, "join")
    if (base.name, joined.name) not in JOINABLE:
        raise PqlSemanticError(
            f"JOIN {base.name} with {joined.name} is not allowed: the only join is receipts "
            "<-> decisions ON receipts.execution_id = decisions.execution_id",
            field="join",
            reason=ErrorReason.ERROR_REASON_PQL_JOIN,
        )
    sides = {
        (query.join.left.subject, query.join.left.name),
        (query.join.right.subject, query.join.right.name),
    }
    if sides != {(base.name, JOIN_KEY), (joined.name, JOIN_KEY)}:
        raise PqlSemanticError(
            f"JOIN ... ON must be {base.name}.{JOIN_KEY} = {joined.name}.{JOIN_KEY}",
            field="join",
            reason=ErrorReason.ERROR_REASON_PQL_JOIN,
        )
    return joined


def _time_sql(subject: Subject) -> sql.Composable:
    return sql.SQL("{}.{}").format(
        sql.Identifier(subject.alias), sql.Identifier(subject.time_field)
    )


def _field_sql(subject: Subject, f: Field, b: _Builder) -> sql.Composable:
    if "SELECT" in f.sql:
        b.subquery = True
    if f.name.startswith("label."):
        key = f.name[len("label.") :]
        return sql.SQL("({}.labels ->> {})").format(sql.Identifier(subject.alias), b.bind(key))
    return sql.SQL(f.sql.format(a=subject.alias))


def _in_group(ref: FieldRef, query: Query, scope: _Scope) -> bool:
    target = scope.resolve(ref)
    return any(scope.resolve(g) == target for g in query.group_by)


def _check_aggregate(agg: Aggregate, scope: _Scope) -> None:
    if agg.subject is not None:
        _subject(agg.subject, "query")
        if agg.subject not in [s.name for s in scope.subjects()]:
            raise PqlSemanticError(f"{agg.text()}: {agg.subject} is not in this query")
        return
    if agg.field is None:
        return
    _, f = scope.resolve(agg.field)
    if f.member:
        raise PqlSemanticError(f"{agg.text()}: {agg.field.text()} holds a list")
    if agg.fn in ("SUM", "AVG") and f.type not in _NUMERIC:
        raise PqlSemanticError(f"{agg.text()}: {agg.fn} needs a number or a duration field")
    if agg.fn in ("MIN", "MAX") and f.type not in _ORDERED:
        raise PqlSemanticError(f"{agg.text()}: {agg.fn} needs an ordered field")


def _aggregate_sql(agg: Aggregate, scope: _Scope, b: _Builder) -> tuple[sql.Composable, str]:
    if agg.field is None:
        return sql.SQL("count(*)"), "int"
    subject, f = scope.resolve(agg.field)
    expr = _field_sql(subject, f, b)
    if agg.fn == "COUNT":
        return sql.SQL("count({})").format(expr), "int"
    ctype = "float" if agg.fn == "AVG" and f.type != "duration" else f.type
    if agg.fn == "SUM" and f.type == "int":
        ctype = "int"
    return sql.SQL("{}({})").format(sql.SQL(agg.fn.lower()), expr), ctype


def _predicate(node: Predicate, scope: _Scope, b: _Builder) -> sql.Composable:
    if isinstance(node, And):
        return sql.SQL("({} AND {})").format(
            _predicate(node.left, scope, b), _predicate(node.right, scope, b)
        )
    if isinstance(node, Or):
        return sql.SQL("({} OR {})").format(
            _predicate(node.left, scope, b), _predicate(node.right, scope, b)
        )
    if isinstance(node, Not):
        return sql.SQL("(NOT {})").format(_predicate(node.operand, scope, b))
    if isinstance(node, Compare):
        subject, f = scope.resolve(node.field)
        value = _value(node.value, f, node.field, b)
        if f.member:
            if node.op not in ("=", "!="):
                raise PqlSemanticError(
                    f"{node.field.text()} holds a list: use =, != or IN", field="where"
                )
            test = sql.SQL("({}.keys @> {})").format(
                sql.Identifier(subject.alias), b.bind([_term(b.tenant, f, value)])
            )
            return test if node.op == "=" else sql.SQL("(NOT {})").format(test)
        expr = _field_sql(subject, f, b)
        if f.type == "bool" and node.op not in ("=", "!="):
            raise PqlSemanticError(f"{node.field.text()} is true/false: use = or !=", field="where")
        # Plain operators, not IS [NOT] DISTINCT FROM (which would defeat indexes): a NULL
        # field never matches.
        return sql.SQL("({} {} {})").format(expr, sql.SQL(node.op), b.bind(value))
    assert isinstance(node, InList)
    subject, f = scope.resolve(node.field)
    if f.type == "bool":
        raise PqlSemanticError(f"{node.field.text()} is true/false: use = or !=", field="where")
    values = [_value(v, f, node.field, b) for v in node.values]
    if f.member:
        test = sql.SQL("({}.keys && {})").format(
            sql.Identifier(subject.alias), b.bind([_term(b.tenant, f, v) for v in values])
        )
    else:
        test = sql.SQL("({} = ANY({}))").format(_field_sql(subject, f, b), b.bind(values))
    return sql.SQL("(NOT {})").format(test) if node.negated else test


def _term(tenant: str, f: Field, value: object) -> str:
    """The `keys` term of a list field's value (see migration 0003 and the catalog)."""
    return f"{tenant}|{f.sql}:{value}"


def _value(operand: Operand, f: Field, ref: FieldRef, b: _Builder) -> object:
    if isinstance(operand, Param):
        if operand.name not in b.values:
            raise PqlSemanticError(
                f"parameter :{operand.name} has no value",
                field=f"params.{operand.name}",
                reason=ErrorReason.ERROR_REASON_PQL_PARAM_MISSING,
            )
        raw: object = b.values[operand.name]
        where = f"parameter :{operand.name}"
    else:
        raw = operand.value
        where = f"line {operand.pos.line}, column {operand.pos.column}"
    return _coerce(raw, f, ref, where, from_param=isinstance(operand, Param))


def _coerce(raw: object, f: Field, ref: FieldRef, where: str, *, from_param: bool) -> object:
    def bad(expected: str) -> PqlSemanticError:
        return PqlSemanticError(
            f"{where}: {ref.text()} is compared with {raw!r}, expected {expected}",
            field="params" if from_param else "where",
            reason=ErrorReason.ERROR_REASON_PQL_TYPE,
        )

    if f.type == "str":
        if not isinstance(raw, str):
            raise bad("a string")
        if "\x00" in raw or len(raw) > 1024:
            raise bad("a string without NUL of at most 1024 characters")
        return raw
    if f.type == "bool":
        if not isinstance(raw, bool):
            raise bad("true or false")
        return raw
    if f.type in ("int", "float"):
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise bad("a number")
        if isinstance(raw, float):
            if not math.isfinite(raw):
                raise bad("a finite number")
            if f.type == "int" and raw.is_integer():
                raw = int(raw)
        if isinstance(raw, int) and not _INT64[0] <= raw <= _INT64[1]:
            raise bad("a number within 64-bit range")
        return raw
    if f.type == "duration":
        if isinstance(raw, timedelta):
            return raw
        if isinstance(raw, str) and raw[:-1].isdigit() and raw[-1:] in DURATION_UNITS:
            amount = int(raw[:-1])
            if amount <= 100_000:
                return amount * DURATION_UNITS[raw[-1]]
        raise bad("a duration like 5m or 2h")
    # time
    if isinstance(raw, str):
        text = raw.strip()
        try:
            moment = datetime.fromisoformat(
                text.replace("Z", "+00:00") if text.endswith("Z") else text
            )
        except ValueError:
            raise bad("an RFC 3339 timestamp like 2026-01-31T12:00:00Z") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment
    raise bad("an RFC 3339 timestamp like 2026-01-31T12:00:00Z")


def _fmt(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit in ("d", "h", "m", "s"):
        size = int(DURATION_UNITS[unit].total_seconds())
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
