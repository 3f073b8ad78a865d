"""`mc.pql.v1.QueryService` against a real server and Postgres: golden queries, tenant
isolation, truncation, the cost guard, the cache and its invalidation, signed saved queries,
CSV export, provenance search, and a hypothesis run that never sees INTERNAL."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pql_support import md, record

from mc.pql.v1 import provenance_pb2 as pb
from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc.pql.v1 import query_service_pb2 as q
from mc.pql.v1 import query_service_pb2_grpc as q_grpc
from mc_common.errors import status_details
from mc_common.server import RunningServer, start_server
from mc_common.testing.identity import TestTrustDomain
from mc_pql.app import PqlApp
from mc_pql.settings import PqlSettings

GOLDENS = Path(__file__).resolve().parents[3] / "contracts" / "pql" / "goldens"
PARAMS = {"region": "us-east-1", "min_cost": 1000, "digest": "ab" * 32}


@pytest.fixture
async def server(
    pql_settings: PqlSettings, mc_trust_domain: TestTrustDomain
) -> AsyncIterator[tuple[RunningServer, PqlApp]]:
    # Serves as the `pql` workload: the CLI test below verifies that name, as in production.
    identity = mc_trust_domain.settings("pql")
    settings = pql_settings.model_copy(update={"query_row_cap": 5, "identity": identity})
    app = await PqlApp.create(settings)
    running = await start_server(settings, app.spec())
    yield running, app
    await running.stop(0)
    await app.close()


@pytest.fixture
async def stubs(
    server: tuple[RunningServer, PqlApp], mc_trust_domain: TestTrustDomain
) -> AsyncIterator[tuple[svc_grpc.ProvenanceServiceStub, q_grpc.QueryServiceStub]]:
    async with mc_trust_domain.channel(server[0].address, server="pql") as channel:
        yield svc_grpc.ProvenanceServiceStub(channel), q_grpc.QueryServiceStub(channel)


def values(params: dict[str, object]) -> dict[str, struct_pb2.Value]:
    out = {}
    for name, value in params.items():
        v = struct_pb2.Value()
        if isinstance(value, bool):
            v.bool_value = value
        elif isinstance(value, int | float):
            v.number_value = value
        else:
            v.string_value = str(value)
        out[name] = v
    return out


async def seed(prov: svc_grpc.ProvenanceServiceStub, tenant: str, count: int) -> None:
    for n in range(count):
        await prov.RecordReceipt(record(f"exec-{n}", n), metadata=md(tenant))
    decision = pb.PolicyDecision(
        decision_id="dec-1", execution_id="exec-0", policy="mc.budget@2", rule="budget.deny",
        allow=False, reason="monthly budget exhausted",
    )  # fmt: skip
    decision.decided_at.GetCurrentTime()
    await prov.RecordPolicyDecision(
        svc.RecordPolicyDecisionRequest(decision=decision), metadata=md(tenant)
    )


def rows(result: q.QueryResult) -> list[dict[str, object]]:
    names = [c.name for c in result.columns]
    out = []
    for row in result.rows:
        cells = []
        for cell in row.cells:
            kind = cell.WhichOneof("value")
            cells.append(None if kind is None else getattr(cell, kind))
        out.append(dict(zip(names, cells, strict=True)))
    return out


@pytest.mark.parametrize("name", sorted(p.stem for p in GOLDENS.glob("*.pql")))
async def test_every_golden_query_runs(stubs, name: str) -> None:  # type: ignore[no-untyped-def]
    prov, query = stubs
    await seed(prov, "acme", 3)
    text = (GOLDENS / f"{name}.pql").read_text()
    reply = await query.Query(
        q.QueryRequest(query=text, params=values(PARAMS)), metadata=md("acme")
    )
    assert reply.result.columns
    assert reply.result.grammar_version == "1.2"


async def test_receipt_facts_answer_queries_and_aggregates(stubs) -> None:  # type: ignore[no-untyped-def]
    prov, query = stubs
    await seed(prov, "acme", 3)
    reply = await query.Query(
        q.QueryRequest(query="FIND COUNT(receipts), SUM(receipts.cost) GROUP BY package"),
        metadata=md("acme"),
    )
    assert rows(reply.result) == [
        {"package": "acme/etl", "COUNT(receipts)": 3, "SUM(receipts.cost)": 3 * 1_250_000 + 3}
    ]
    reply = await query.Query(
        q.QueryRequest(query="FIND receipts WHERE decision = 'allow' AND step = 'extract'"),
        metadata=md("acme"),
    )
    assert len(reply.result.rows) == 3
    reply = await query.Query(
        q.QueryRequest(query="FIND executions WHERE deny = true"), metadata=md("acme")
    )
    assert rows(reply.result) == []  # no executions recorded, only receipts
    reply = await query.Query(
        q.QueryRequest(
            query="FIND receipts JOIN decisions ON receipts.execution_id = decisions.execution_id"
            " WHERE decisions.deny = true"
        ),
        metadata=md("acme"),
    )
    joined = rows(reply.result)
    assert [(r["receipts.execution_id"], r["decisions.rule"]) for r in joined] == [
        ("exec-0", "budget.deny")
    ]


async def test_no_query_reaches_another_tenants_rows(stubs) -> None:  # type: ignore[no-untyped-def]
    prov, query = stubs
    await seed(prov, "acme", 2)
    for name in sorted(p.stem for p in GOLDENS.glob("*.pql")):
        text = (GOLDENS / f"{name}.pql").read_text()
        reply = await query.Query(
            q.QueryRequest(query=text, params=values(PARAMS)), metadata=md("other")
        )
        assert all(
            r.get(k) in (0, None) for r in rows(reply.result) for k in r if k.startswith("COUNT")
        )
        if not any(
            c.name.startswith(("COUNT", "SUM", "AVG", "MIN", "MAX")) for c in reply.result.columns
        ):
            assert rows(reply.result) == [], name
    search = await query.SearchProvenance(
        q.SearchProvenanceRequest(q="package:acme/etl"), metadata=md("other")
    )
    assert list(search.hits) == []


async def test_row_cap_truncates_explicitly(stubs) -> None:  # type: ignore[no-untyped-def]
    prov, query = stubs
    await seed(prov, "acme", 8)
    reply = await query.Query(q.QueryRequest(query="FIND receipts"), metadata=md("acme"))
    assert len(reply.result.rows) == 5
    assert reply.result.truncated
    assert reply.result.total_estimate >= 5
    complete = await query.Query(
        q.QueryRequest(query="FIND receipts WHERE execution_id = 'exec-1'"), metadata=md("acme")
    )
    assert not complete.result.truncated and complete.result.total_estimate == 1


async def test_cost_guard_refuses_before_running(
    pql_settings: PqlSettings, mc_trust_domain: TestTrustDomain
) -> None:
    settings = pql_settings.model_copy(update={"query_max_cost": 2.5})
    app = await PqlApp.create(settings)
    running = await start_server(settings, app.spec())
    try:
        async with mc_trust_domain.channel(running.address) as channel:
            prov = svc_grpc.ProvenanceServiceStub(channel)
            query = q_grpc.QueryServiceStub(channel)
            await seed(prov, "acme", 3)
            with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
                conn.execute("ANALYZE pql.receipt_facts")
            app.queries._engine.stats.invalidate()
            # aggregating 3 rows reads 3 > 2.5: refused before it runs
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await query.Query(q.QueryRequest(query="FIND COUNT(receipts)"), metadata=md("acme"))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            details = status_details(info.value)
            failure = next(
                d for d in details if isinstance(d, error_details_pb2.PreconditionFailure)
            )
            assert failure.violations[0].type == "cost"
            assert "narrow it" in (info.value.details() or "")
            explained = await query.ExplainQuery(
                q.ExplainQueryRequest(query="FIND COUNT(receipts)"), metadata=md("acme")
            )
            assert not explained.accepted and "rows" in explained.rejection
            assert "Plan Rows" in explained.plan_json
            # the newest rows through the index stop at the row cap: affordable
            rows_only = await query.Query(
                q.QueryRequest(query="FIND receipts LIMIT 1"), metadata=md("acme")
            )
            assert len(rows_only.result.rows) == 1
            # another tenant has no rows to read
            await query.Query(q.QueryRequest(query="FIND COUNT(receipts)"), metadata=md("other"))
    finally:
        await running.stop(0)
        await app.close()


async def test_cache_hits_and_new_data_invalidates(stubs, server) -> None:  # type: ignore[no-untyped-def]
    prov, query = stubs
    await seed(prov, "acme", 1)
    text = "FIND COUNT(receipts)"
    first = await query.Query(q.QueryRequest(query=text), metadata=md("acme"))
    second = await query.Query(q.QueryRequest(query=text), metadata=md("acme"))
    assert not first.result.cached and second.result.cached
    await prov.RecordReceipt(record("exec-new", 99), metadata=md("acme"))
    third = await query.Query(q.QueryRequest(query=text), metadata=md("acme"))
    assert not third.result.cached
    assert rows(third.result) == [{"COUNT(receipts)": 2}]
    # another tenant's write does not invalidate acme's entry
    await prov.RecordReceipt(record("exec-b", 1), metadata=md("other"))
    fourth = await query.Query(q.QueryRequest(query=text), metadata=md("acme"))
    assert fourth.result.cached
    assert server[1].queries._engine.cache.hit_rate > 0


async def test_saved_queries_are_signed_and_verified_before_running(
    stubs, pql_settings: PqlSettings
) -> None:  # type: ignore[no-untyped-def]
    prov, query = stubs
    await seed(prov, "acme", 2)
    saved = await query.SaveQuery(
        q.SaveQueryRequest(
            name="by-exec", query="FIND receipts WHERE execution_id = :e", description="one run"
        ),
        metadata=md("acme"),
    )
    assert saved.saved_query.verified and list(saved.saved_query.parameters) == ["e"]
    ran = await query.RunSavedQuery(
        q.RunSavedQueryRequest(name="by-exec", params=values({"e": "exec-1"})), metadata=md("acme")
    )
    assert len(ran.result.rows) == 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await query.RunSavedQuery(q.RunSavedQueryRequest(name="by-exec"), metadata=md("other"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # an edit in storage breaks the signature: the query is refused, never run
    with psycopg.connect(pql_settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("UPDATE pql.saved_queries SET query = 'FIND receipts' WHERE name = 'by-exec'")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await query.RunSavedQuery(
            q.RunSavedQueryRequest(name="by-exec", params=values({"e": "exec-1"})),
            metadata=md("acme"),
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = await query.ListSavedQueries(q.ListSavedQueriesRequest(), metadata=md("acme"))
    assert [(s.name, s.verified) for s in listed.saved_queries] == [("by-exec", False)]


async def test_export_streams_csv_with_the_truncation_flag(stubs) -> None:  # type: ignore[no-untyped-def]
    prov, query = stubs
    await seed(prov, "acme", 7)
    call = query.ExportQuery(
        q.ExportQueryRequest(query="FIND receipts WHERE cost >= :c", params=values({"c": 0})),
        metadata=md("acme"),
    )
    chunks = [m async for m in call]
    trailer = dict(await call.trailing_metadata())
    document = b"".join(m.csv_chunk for m in chunks).decode()
    table = list(csv.reader(io.StringIO(document)))
    assert table[0][:3] == ["digest", "sequence", "execution_id"]
    assert len(table) == 1 + 5
    assert chunks[-1].done and chunks[-1].truncated
    assert trailer["x-mc-truncated"] == "true"


async def test_search_by_digest_task_decision_package_and_words(stubs) -> None:  # type: ignore[no-untyped-def]
    prov, query = stubs
    await seed(prov, "acme", 3)
    digest = f"{1:064x}"  # the step output of receipt 1

    async def search(text: str, **kw: object) -> list[tuple[str, str]]:
        reply = await query.SearchProvenance(
            q.SearchProvenanceRequest(q=text, **kw),
            metadata=md("acme"),  # type: ignore[arg-type]
        )
        return [(h.kind, h.title) for h in reply.hits]

    assert len(await search(f"digest:{digest}")) == 1
    assert len(await search("task:extract")) == 3
    assert [k for k, _ in await search("decision:budget.deny")] == ["decision"]
    assert len(await search("package:acme/etl", kinds=["receipt"])) == 3
    assert len(await search("monthly budget")) == 1
    first = await query.SearchProvenance(
        q.SearchProvenanceRequest(q="task:extract", page_size=2), metadata=md("acme")
    )
    assert len(first.hits) == 2 and first.next_page_token
    second = await query.SearchProvenance(
        q.SearchProvenanceRequest(q="task:extract", page_size=2, page_token=first.next_page_token),
        metadata=md("acme"),
    )
    assert len(second.hits) == 1 and not second.next_page_token
    for token, tenant in ((first.next_page_token, "other"), ("forged", "acme")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await query.SearchProvenance(
                q.SearchProvenanceRequest(q="task:extract", page_size=2, page_token=token),
                metadata=md(tenant),
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_parse_errors_reach_the_client_with_their_position(stubs) -> None:  # type: ignore[no-untyped-def]
    _, query = stubs
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await query.Query(q.QueryRequest(query="FIND receipts\nWHERE"), metadata=md("acme"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "line 2, column 6" in (info.value.details() or "")
    bad = next(d for d in status_details(info.value) if isinstance(d, error_details_pb2.BadRequest))
    assert bad.field_violations[0].field == "query"


_TEXT = st.one_of(
    st.text(max_size=120),
    st.lists(
        st.sampled_from(
            ["FIND", "receipts", "decisions", "COUNT(receipts)", "WHERE", "cost", ">", "=", "'x'",
             "1", ":p", "AND", "OR", "NOT", "(", ")", "SINCE", "1d", "GROUP", "BY", "package",
             "BUCKET", "1h", "TOP", "3", "JOIN", "ON", "receipts.execution_id", "=",
             "decisions.execution_id", "\x00", "'\x00'", "99999999999999999999"]
        ),
        max_size=16,
    ).map(" ".join),
)  # fmt: skip
_PARAM = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.booleans(),
)


async def test_no_query_text_or_parameter_gets_internal(stubs) -> None:  # type: ignore[no-untyped-def]
    prov, query = stubs
    await seed(prov, "acme", 1)
    seen: list[tuple[str, object]] = []

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(text=_TEXT, param=_PARAM)
    def collect(text: str, param: object) -> None:
        seen.append((text, param))

    collect()
    for text, param in seen:
        request = q.QueryRequest(query=text or "x")
        value = struct_pb2.Value()
        if isinstance(param, bool):
            value.bool_value = param
        elif isinstance(param, int):
            value.number_value = float(param)
        elif isinstance(param, float):
            value.number_value = param
        else:
            value.string_value = str(param)
        request.params["p"].CopyFrom(value)
        try:
            reply = await query.Query(request, metadata=md("other"))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.FAILED_PRECONDITION,
            ), (text, param, exc.code(), exc.details())
            continue
        for row in rows(reply.result):  # tenant "other" has no data: only empty aggregates
            assert all(v in (0, None) for v in row.values()), (text, row)


async def test_cli_runs_explains_exports_and_searches(
    stubs,
    server,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    mc_trust_domain: TestTrustDomain,
) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from maestro_cli.main import main

    prov, _ = stubs
    await seed(prov, "acme", 2)
    for key, value in mc_trust_domain.env("gateway").items():  # the CLI calls as the gateway
        monkeypatch.setenv(key, value)
    address = ["--tenant", "acme", "--address", server[0].address]
    code = await asyncio.to_thread(
        main, ["pql", "run", *address, "FIND COUNT(receipts) GROUP BY package SINCE 1d"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "package   COUNT(receipts)" in out and "acme/etl  2" in out and "(1 row)" in out
    code = await asyncio.to_thread(
        main, ["pql", "explain", *address, "FIND receipts WHERE cost > :c", "-p", "c=5"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "verdict: would run" in out and "cost:" in out and "%(p" in out
    code = await asyncio.to_thread(main, ["pql", "run", *address, "FIND receipts WHERE"])
    assert code == 1
    assert "line 1, column 20" in capsys.readouterr().err
    code = await asyncio.to_thread(main, ["pql", "search", *address, "task:extract"])
    assert code == 0 and capsys.readouterr().out.count("receipt") == 2
    code = await asyncio.to_thread(main, ["pql", "run", "--csv", *address, "FIND receipts"])
    out = capsys.readouterr().out
    assert code == 0 and out.splitlines()[0].startswith("digest,sequence,execution_id")
    assert len(out.splitlines()) == 3
