"""PQL's parser and planner, without a database: the grammar, error positions, the golden
queries' SQL, and the guardrails the planner enforces. A hypothesis suite checks that no text
produces anything but a typed INVALID_ARGUMENT, and that every plan is tenant-scoped."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mc_common.errors import MCError
from mc_pql.query import PqlSyntaxError, parse
from mc_pql.query.errors import PqlSemanticError
from mc_pql.query.planner import plan

GOLDENS = Path(__file__).resolve().parents[3] / "contracts" / "pql" / "goldens"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
PARAMS = {"region": "us-east-1", "min_cost": 1000, "digest": "ab" * 32}


def golden_names() -> list[str]:
    return sorted(p.stem for p in GOLDENS.glob("*.pql"))


def test_there_is_a_golden_for_every_construct() -> None:
    text = " ".join((GOLDENS / f"{n}.pql").read_text() for n in golden_names()).upper()
    for construct in (
        "JOIN", "WHERE", "GROUP BY", "BUCKET BY", "TOP", "SINCE", "LIMIT", "COUNT(", "SUM(",
        "AVG(", "MIN(", "MAX(", " IN (", " NOT ", " OR ", " AND ", ":", "!=", ">=", ">",
        "TRUE", "FALSE", "5M", "LABEL.",
    ):  # fmt: skip
        assert construct in text, construct


@pytest.mark.parametrize("name", golden_names())
def test_golden_queries_compile_to_their_recorded_sql(name: str) -> None:
    query = (GOLDENS / f"{name}.pql").read_text()
    compiled = plan(parse(query), tenant="acme", params=PARAMS, now=NOW)
    expected = (GOLDENS / f"{name}.sql").read_text().strip()
    assert compiled.statement.as_string(None) == expected
    # every table reference is scoped to the tenant, and every statement is bounded
    tables = re.findall(r'FROM "(\w+)" "(\w)"|JOIN "(\w+)" "(\w)"', expected)
    for match in tables:
        alias = match[1] or match[3]
        assert f'"{alias}".tenant = ' in expected
    assert " LIMIT %(" in expected
    assert "acme" in compiled.params.values()


def test_parse_errors_name_line_column_and_what_was_expected() -> None:
    with pytest.raises(PqlSyntaxError) as info:
        parse("FIND receipts\nWHERE cost > ")
    assert (info.value.line, info.value.column) == (2, 14)
    assert "a value" in info.value.expected
    assert info.value.grpc_code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(PqlSyntaxError) as info:
        parse("FIND receipts SINCE 30x")
    assert info.value.column == 21
    with pytest.raises(PqlSyntaxError, match="unterminated string"):
        parse("FIND receipts WHERE package = 'acme")
    with pytest.raises(PqlSyntaxError, match="expected one of JOIN, WHERE"):
        parse("FIND receipts receipts")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("FIND tenants", "unknown subject"),
        ("FIND receipts WHERE tenant = 'other'", "unknown field 'tenant'"),
        (
            "FIND receipts JOIN executions ON receipts.execution_id = executions.execution_id",
            "only join",
        ),
        ("FIND receipts JOIN decisions ON receipts.digest = decisions.decision_id", "JOIN ... ON"),
        ("FIND receipts SINCE 181d", "maximum of 180d"),
        ("FIND receipts SINCE 26w", "maximum of 180d"),
        ("FIND receipts WHERE cost = 'a lot'", "expected a number"),
        ("FIND receipts WHERE denied > true", "use = or !="),
        ("FIND receipts WHERE decision > 'x'", "holds a list"),
        ("FIND COUNT(receipts) GROUP BY decision", "cannot be grouped"),
        ("FIND SUM(receipts.package)", "needs a number"),
        ("FIND receipts WHERE cost > :missing", "has no value"),
        ("FIND COUNT(receipts) BUCKET BY 2h", "not supported"),
        ("FIND receipts WHERE started_at > 'yesterday'", "RFC 3339"),
        ("FIND receipts WHERE cost > 99999999999999999999", "64-bit"),
    ],
)
def test_semantic_errors_are_invalid_argument(query: str, message: str) -> None:
    with pytest.raises(PqlSemanticError, match=re.escape(message)) as info:
        plan(parse(query), tenant="acme", now=NOW)
    assert info.value.grpc_code == grpc.StatusCode.INVALID_ARGUMENT


def test_guardrails_default_window_and_row_cap_are_reported() -> None:
    compiled = plan(parse("FIND receipts LIMIT 50000"), tenant="acme", now=NOW, row_cap=10_000)
    assert compiled.row_cap == 10_000
    assert any("SINCE 7d applied" in g for g in compiled.guardrails)
    assert any("capped at the row cap" in g for g in compiled.guardrails)
    assert compiled.params[list(compiled.params)[-1]] == 10_001  # cap + 1 to detect truncation


def test_values_never_reach_the_sql_text() -> None:
    evil = "x'); DROP TABLE receipts; --"
    compiled = plan(
        parse("FIND receipts WHERE package = :p OR region = 'y'' OR 1=1 --'"),
        tenant="t'; DELETE FROM receipts; --",
        params={"p": evil},
        now=NOW,
    )
    text = compiled.statement.as_string(None)
    assert "DROP" not in text and "DELETE" not in text and "1=1" not in text
    assert evil in compiled.params.values()


def test_nesting_and_list_bounds_are_typed_errors() -> None:
    with pytest.raises(PqlSyntaxError, match="levels of NOT"):
        parse("FIND receipts WHERE " + "(" * 100 + "cost > 1" + ")" * 100)
    with pytest.raises(PqlSyntaxError, match="at most 1000 values"):
        parse("FIND receipts WHERE region IN (" + ", ".join(["'a'"] * 1001) + ")")
    with pytest.raises(PqlSyntaxError, match="longer than"):
        parse("FIND receipts WHERE region = 'a' " + " " * 9000)


_TOKENS = st.sampled_from(
    [
        "FIND", "receipts", "executions", "decisions", "JOIN", "ON", "WHERE", "GROUP", "BY",
        "BUCKET", "TOP", "SINCE", "LIMIT", "AND", "OR", "NOT", "IN", "COUNT", "SUM", "AVG", "MIN",
        "MAX", "(", ")", ",", ".", "*", "=", "!=", "<", "<=", ">", ">=", "cost", "package",
        "decision", "tenant", "execution_id", "receipts.execution_id", "decisions.execution_id",
        "'x'", "'it''s'", "1", "2.5", "30d", "1h", "5m", ":p", "true", "false", "label.team",
        "\x00", "'\x00'", "99999999999999999999999", "1000000d", "--c\n", "\n",
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(_TOKENS, max_size=25).map(" ".join), st.text(max_size=200)))
def test_any_text_is_a_plan_or_a_typed_invalid_argument(text: str) -> None:
    try:
        compiled = plan(parse(text), tenant="acme", params={"p": "v"}, now=NOW)
    except MCError as exc:
        assert exc.grpc_code == grpc.StatusCode.INVALID_ARGUMENT, exc
        return
    sql_text = compiled.statement.as_string(None)
    for alias in re.findall(r'(?:FROM|JOIN) "\w+" "(\w)"', sql_text):
        assert f'"{alias}".tenant = ' in sql_text
    assert "acme" in compiled.params.values()
    assert "LIMIT %(" in sql_text


def test_estimator_reads_tenant_and_window_shares_from_statistics() -> None:
    from datetime import timedelta

    from mc_pql.query.stats import TableStats, _array

    assert _array('{acme,"t 1","quo\\"te",x}') == ["acme", "t 1", 'quo"te', "x"]
    day = timedelta(days=1)
    bounds = [NOW - 4 * day, NOW - 3 * day, NOW - 2 * day, NOW - day, NOW]  # 4 equal buckets
    table = TableStats(1000.0, {"big": 0.5}, 0.01, bounds)
    assert table.tenant_share("big") == 0.5 and table.tenant_share("small") == 0.01
    assert table.window_share(NOW - 10 * day) == 1.0
    assert table.window_share(NOW - 2 * day) == 0.5
    assert table.window_share(NOW - 1.5 * day) == 0.375
    assert TableStats(10.0, {}, 1.0, ()).window_share(NOW) == 1.0


def test_result_cache_is_bounded_by_rows_and_entries() -> None:
    from mc_pql.query.cache import ResultCache

    now = [0.0]
    cache: ResultCache[str] = ResultCache(3, ttl_s=10, max_weight=100, clock=lambda: now[0])
    cache.put("a", "A", weight=60)
    cache.put("b", "B", weight=30)
    assert cache.get("a") == "A"  # a is now the most recent
    cache.put("c", "C", weight=50)  # 140 rows: the least recent (b) goes, then 110: a goes
    assert (cache.get("b"), cache.get("a"), cache.get("c")) == (None, None, "C")
    cache.put("huge", "H", weight=101)  # never fits
    assert cache.get("huge") is None
    now[0] = 11.0
    assert cache.get("c") is None  # expired
