"""Benchmark: PQL queries and provenance search on a generated provenance data set.

Generates a deterministic data set (default 10 million receipts across 1,000 tenants, with a
skewed tenant size distribution, plus one decision and one execution per ten receipts) in a
fresh database, starts the real `mc-pql` process on it, and measures:

1. each golden query shape run by the PQL engine (cache off) beside the equivalent
   hand-written SQL, in this process (target: PQL at most 1.2x on cache misses), and the cost
   estimator's time (target: under 5 ms);
2. a mixed workload of the golden shapes at 120 queries/s offered through gRPC, 80% of them
   repeats of a small set of popular queries (targets: p95 <= 100 ms, cache hit >= 70% on the
   repeated share), beside a bare gRPC echo at the same rate;
3. provenance search by digest, task, decision, package and words (target: p95 <= 50 ms).

The receipts are written as their query-side projection (`receipt_facts`, `search_entries`)
directly, not through signing: recording throughput is bench/pql_receipts.py's subject.

Usage: uv run python bench/pql_queries.py [--receipts 10000000] [--tenants 1000]
       [--seconds 30] [--keep NAME] (keep/reuse the generated database NAME)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).parent))

from common import free_port, paced_loop, percentile, start_child, start_echo

from mc.pql.v1 import query_service_pb2 as q
from mc.pql.v1 import query_service_pb2_grpc as q_grpc
from mc_common.db import create_pool
from mc_common.signing import PemSigner
from mc_common.testing import infra
from mc_pql.query.engine import QueryEngine, QueryLimits

SCHEMA = "pql"
RULES = ["allow", "limits.ok", "budget.deny", "residency.deny", "privacy.ok"]
REGIONS = ["us-east-1", "eu-west-1", "ap-south-1", "sa-east-1"]

# Deterministic pseudo-random columns: hashint8extended(g, seed) is stable across runs and
# parallel workers, unlike random().
_U = "((hashint8extended(g, {seed}) & 16777215)::float8 / 16777216.0)"


def _u(seed: int) -> str:
    return _U.format(seed=seed)


def generate_sql(receipts: int, tenants: int) -> list[str]:
    tenant = f"'t' || lpad((floor({tenants} * {_u(1)} * {_u(1)}))::int::text, 4, '0')"
    return [
        "SET LOCAL synchronous_commit = off",
        f"""
        INSERT INTO receipt_facts (tenant, sequence, digest, execution_id, package_name,
            package_version, package_digest, region, cost_micros, currency, steps, failed_steps,
            started_at, finished_at, recorded_at, denied, keys)
        SELECT tenant, g, digest, 'exec-' || g, pkg, '1.' || (g % 7) || '.0', md5(pkg) || md5(pkg),
            region, cost, 'USD', steps, failed, at - make_interval(secs => dur), at, at, denied,
            ARRAY[tenant || '|d:' || rule, tenant || '|d:limits.ok',
                  tenant || '|s:step-' || (g % 20), tenant || '|h:' || digest,
                  tenant || '|e:exec-' || g, tenant || '|p:' || pkg,
                  tenant || '|w:' || replace(pkg, '-', ''),
                  tenant || '|w:' || split_part(region, '-', 1)]
        FROM (
            SELECT g, {tenant} AS tenant,
                md5(g::text) || md5('d' || g) AS digest,
                'pkg-' || floor(50 * {_u(2)} * {_u(2)})::int AS pkg,
                (ARRAY{REGIONS!r})[1 + (g % 4)] AS region,
                floor(10000000 * {_u(3)})::bigint AS cost,
                1 + (g % 8) AS steps, (g % 13 = 0)::int AS failed,
                now() - make_interval(secs => 180 * 86400 * {_u(4)}) AS at,
                5 + 900 * {_u(5)} AS dur,
                (g % 20 = 0) AS denied,
                (ARRAY{RULES!r})[1 + (g % 5)] AS rule
            FROM generate_series(1, {receipts}) AS g
        ) AS s
        """,
        """
        INSERT INTO search_entries (tenant, kind, ref, at, title, keys)
        SELECT tenant, 'receipt', digest, recorded_at,
               package_name || ' ' || package_version || ' ' || execution_id, keys
        FROM receipt_facts
        """,
        f"""
        INSERT INTO policy_decisions (tenant, decision_id, execution_id, policy, bundle_digest,
            rule, allow, reason, decided_at, recorded_at)
        SELECT tenant, 'dec-' || sequence, execution_id, 'mc.' || split_part(rule, '.', 1) || '@3',
               '', rule, rule NOT LIKE '%.deny',
               CASE WHEN rule LIKE '%.deny' THEN 'over budget' ELSE '' END, recorded_at, recorded_at
        FROM (SELECT *, (ARRAY{RULES!r})[1 + (sequence % 5)] AS rule FROM receipt_facts
              WHERE sequence % 10 = 0) AS r
        """,
        """
        INSERT INTO executions (tenant, execution_id, package_name, package_version,
            package_digest, region, status, started_at, finished_at, labels, content_sha256,
            recorded_at)
        SELECT tenant, execution_id, package_name, package_version, package_digest, region,
               CASE WHEN failed_steps > 0 THEN 'FAILED' ELSE 'SUCCEEDED' END, started_at,
               finished_at, jsonb_build_object('team', 'team-' || (sequence % 7)),
               digest, recorded_at
        FROM receipt_facts WHERE sequence % 10 = 5
        """,
        """
        INSERT INTO search_entries (tenant, kind, ref, at, title, keys)
        SELECT tenant, 'decision', decision_id, decided_at, policy || ' ' || rule,
               ARRAY[tenant || '|d:' || rule, tenant || '|e:' || execution_id]
        FROM policy_decisions
        """,
        """
        INSERT INTO query_tenant_versions (tenant, version)
        SELECT DISTINCT tenant, 1 FROM receipt_facts ON CONFLICT DO NOTHING
        """,
    ]


async def generate(dsn: str, receipts: int, tenants: int) -> None:
    with psycopg.connect(dsn, autocommit=False, options=f"-c search_path={SCHEMA}") as conn:
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND indexname NOT"
            " LIKE '%%_pkey' AND tablename IN ('receipt_facts', 'search_entries',"
            " 'policy_decisions', 'executions')",
            (SCHEMA,),
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{SCHEMA}"."{name}"')
        for table in ("policy_decisions", "executions"):
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        for i, statement in enumerate(generate_sql(receipts, tenants)):
            t0 = time.perf_counter()
            conn.execute(statement)  # type: ignore[arg-type]
            print(f"    generate step {i}: {time.perf_counter() - t0:.1f} s", flush=True)
        for table in ("policy_decisions", "executions"):
            conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        conn.commit()
        conn.autocommit = True
        conn.execute("SET maintenance_work_mem = '512MB'")
        for name, definition in indexes:
            t0 = time.perf_counter()
            conn.execute(definition)
            print(f"    index {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        conn.execute("ANALYZE")


# The golden query shapes (contracts/pql/goldens), with parameters drawn per call, and the
# hand-written SQL each one stands for (what an engineer would write against the same tables).
SHAPES: list[tuple[str, str, str]] = [
    (
        "receipts by decision",
        "FIND receipts WHERE decision = :rule SINCE 7d",
        "SELECT digest, sequence, execution_id, package_name, package_version, package_digest,"
        " region, cost_micros, currency, steps, failed_steps, started_at, finished_at,"
        " recorded_at, finished_at - started_at, denied FROM receipt_facts WHERE tenant = %(t)s"
        " AND recorded_at >= now() - interval '7 days' AND keys @> ARRAY[%(t)s || '|d:' ||"
        " %(rule)s] ORDER BY recorded_at DESC LIMIT 10001",
    ),
    (
        "count by package",
        "FIND COUNT(receipts) GROUP BY package SINCE 7d",
        "SELECT package_name, count(*) FROM receipt_facts WHERE tenant = %(t)s AND recorded_at >="
        " now() - interval '7 days' GROUP BY 1 ORDER BY 1 LIMIT 10001",
    ),
    (
        "hourly cost",
        "FIND SUM(receipts.cost) BUCKET BY 1h SINCE 2d",
        "SELECT date_bin('1 hour', recorded_at, TIMESTAMPTZ '2000-01-01'), sum(cost_micros) FROM"
        " receipt_facts WHERE tenant = %(t)s AND recorded_at >= now() - interval '2 days'"
        " GROUP BY 1 ORDER BY 1 LIMIT 10001",
    ),
    (
        "top packages by cost",
        "FIND SUM(receipts.cost) GROUP BY package TOP 5 BY SUM(receipts.cost) SINCE 30d",
        "SELECT package_name, sum(cost_micros) FROM receipt_facts WHERE tenant = %(t)s AND"
        " recorded_at >= now() - interval '30 days' GROUP BY 1 ORDER BY 2 DESC NULLS LAST"
        " LIMIT 6",
    ),
    (
        "denials joined",
        "FIND receipts JOIN decisions ON receipts.execution_id = decisions.execution_id "
        "WHERE decisions.allow = false SINCE 7d",
        "SELECT r.*, d.* FROM receipt_facts r JOIN policy_decisions d ON d.tenant = r.tenant AND"
        " d.execution_id = r.execution_id WHERE r.tenant = %(t)s AND d.tenant = %(t)s AND"
        " r.recorded_at >= now() - interval '7 days' AND d.decided_at >= now() - interval"
        " '7 days' AND NOT d.allow ORDER BY r.recorded_at DESC LIMIT 10001",
    ),
    (
        "executions not denied",
        "FIND executions WHERE deny = false SINCE 30d",
        "SELECT e.*, EXISTS (SELECT 1 FROM policy_decisions x WHERE x.tenant = e.tenant AND"
        " x.execution_id = e.execution_id AND NOT x.allow) FROM executions e WHERE e.tenant ="
        " %(t)s AND e.recorded_at >= now() - interval '30 days' AND NOT EXISTS (SELECT 1 FROM"
        " policy_decisions x WHERE x.tenant = e.tenant AND x.execution_id = e.execution_id AND"
        " NOT x.allow) ORDER BY e.recorded_at DESC LIMIT 10001",
    ),
    (
        "decision counts by rule, daily",
        "FIND COUNT(decisions) GROUP BY rule BUCKET BY 1d SINCE 14d",
        "SELECT date_bin('1 day', decided_at, TIMESTAMPTZ '2000-01-01'), rule, count(*) FROM"
        " policy_decisions WHERE tenant = %(t)s AND decided_at >= now() - interval '14 days'"
        " GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 10001",
    ),
]


def tenant_pick(rng: random.Random, tenants: int) -> str:
    u = rng.random()
    return f"t{int(tenants * u * u):04d}"


async def compare_shapes(dsn: str, tenants: int, rounds: int) -> list[tuple[str, float, float]]:
    pool = await create_pool(dsn, 1, 2, schema=SCHEMA, name="bench")
    engine = QueryEngine(pool, QueryLimits(cache_entries=0, max_cost=1e12))
    rng = random.Random(7)
    out = []
    try:
        for name, pql, hand in SHAPES:
            pql_ms, sql_ms = [], []
            for i in range(rounds):
                tenant = tenant_pick(rng, tenants)
                params = {"rule": rng.choice(RULES)}

                async def hand_sql(
                    hand: str = hand, tenant: str = tenant, params: dict[str, str] = params
                ) -> float:
                    t0 = time.perf_counter()
                    async with pool.connection() as conn:
                        cursor = await conn.execute(hand, {"t": tenant, **params})  # type: ignore[arg-type]
                        await cursor.fetchall()
                    return (time.perf_counter() - t0) * 1000

                async def through_pql(
                    pql: str = pql, tenant: str = tenant, params: dict[str, str] = params
                ) -> float:
                    t0 = time.perf_counter()
                    await engine.run(tenant, pql, params)
                    return (time.perf_counter() - t0) * 1000

                # The first read of a tenant's window pays for the disk; run one (discarded)
                # first, then both, in alternating order, so neither side gets the warm pages.
                await hand_sql()
                if i % 2:
                    pql_ms.append(await through_pql())
                    sql_ms.append(await hand_sql())
                else:
                    sql_ms.append(await hand_sql())
                    pql_ms.append(await through_pql())
            out.append((name, percentile(pql_ms, 0.5), percentile(sql_ms, 0.5)))
        estimate_ms = []
        for _name, pql, _ in SHAPES:
            explained = await engine.explain(tenant_pick(rng, tenants), pql, {"rule": "allow"})
            estimate_ms.append(explained.estimate.ms)
        out.append(("cost estimate (EXPLAIN)", max(estimate_ms), 0.0))
    finally:
        await pool.close()
    return out


def values(params: dict[str, Any]) -> dict[str, Any]:
    from google.protobuf import struct_pb2

    return {k: struct_pb2.Value(string_value=v) for k, v in params.items()}


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="mc-bench-pqlq-"))
    admin = infra.postgres_dsn()
    db = args.keep or infra.unique_name("mc_bench_pqlq")
    fresh = True
    if args.keep:
        with psycopg.connect(admin, autocommit=True) as conn:
            fresh = not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (db,)
            ).fetchone()
    dsn = infra.create_database(admin, db) if fresh else admin.rsplit("/", 1)[0] + "/" + db
    key = work / "key.pem"
    PemSigner.generate().save(key)
    port = free_port()
    env = {
        "MC_PQL_POSTGRES_DSN": dsn,
        "MC_PQL_SIGNING_KEY_PATH": str(key),
        "MC_PQL_GRPC_PORT": str(port),
        "MC_PQL_LOG_LEVEL": "WARNING",
        "MC_PQL_POOL_MAX_SIZE": "8",
    }
    pql = await start_child([sys.executable, "-m", "mc_pql.main"], env, port, work / "pql.log")
    echo = await start_echo(
        "mc.pql.v1.query_service_pb2.QueryRequest",
        "mc.pql.v1.query_service_pb2.QueryResponse",
        work / "echo.log",
    )
    try:
        if fresh:
            print(f"generating {args.receipts:,} receipts across {args.tenants} tenants ...")
            t0 = time.perf_counter()
            await generate(dsn, args.receipts, args.tenants)
            print(f"  generated in {time.perf_counter() - t0:.0f} s")
        shapes = await compare_shapes(dsn, args.tenants, args.rounds)
        import grpc

        rng = random.Random(11)
        popular = [
            (tenant_pick(rng, args.tenants), rng.choice(SHAPES)[1], rng.choice(RULES))
            for _ in range(20)
        ]
        hits = {"repeat": 0, "repeat_hit": 0}
        search_terms = ["task:step-3", "decision:budget.deny", "package:pkg-1", "pkg1 us"]
        async with (
            grpc.aio.insecure_channel(pql.address) as channel,
            grpc.aio.insecure_channel(echo.address) as echo_channel,
        ):
            stub = q_grpc.QueryServiceStub(channel)
            echo_call = echo_channel.unary_unary(
                "/bench.Echo/Echo",
                request_serializer=q.QueryRequest.SerializeToString,
                response_deserializer=q.QueryResponse.FromString,
            )

            async def mixed(i: int) -> int:
                if i % 5:
                    tenant, text, rule = popular[(i * 7) % len(popular)]
                    hits["repeat"] += 1
                else:
                    tenant, text, rule = (
                        tenant_pick(rng, args.tenants),
                        rng.choice(SHAPES)[1],
                        rng.choice(RULES),
                    )
                request = q.QueryRequest(query=text, params=values({"rule": rule}))
                reply = await stub.Query(request, metadata=[("x-mc-tenant", tenant)])
                if i % 5 and reply.result.cached:
                    hits["repeat_hit"] += 1
                return 1

            async def echo_one(i: int) -> int:
                await echo_call(q.QueryRequest(query="FIND receipts"))
                return 1

            async def search(i: int) -> int:
                tenant = tenant_pick(rng, args.tenants)
                term = search_terms[i % len(search_terms)]
                await stub.SearchProvenance(
                    q.SearchProvenanceRequest(q=term), metadata=[("x-mc-tenant", tenant)]
                )
                return 1

            echo_run = await paced_loop(echo_one, rate=args.rate, seconds=min(args.seconds, 10))
            load = await paced_loop(
                mixed, rate=args.rate, seconds=args.seconds, server_cpu=pql.cpu_seconds
            )
            searched = await paced_loop(search, rate=50, seconds=min(args.seconds, 20))
    finally:
        pql.stop()
        echo.stop()
        if not args.keep:
            infra.drop_database(admin, db)

    print(
        f"PQL benchmark: {args.receipts:,} receipts, {args.tenants} tenants (2-core machine, "
        f"load average {os.getloadavg()[0]:.2f})"
    )
    print(
        "  shape (p50 over rounds, cache off)        PQL ms   hand SQL ms   ratio (target <= 1.2x)"
    )
    for name, pql_ms, sql_ms in shapes:
        if sql_ms:
            print(f"    {name:38s} {pql_ms:8.2f}   {sql_ms:8.2f}      {pql_ms / sql_ms:5.2f}x")
        else:
            print(f"    {name:38s} {pql_ms:8.2f}   (slowest estimate; target < 5 ms)")
    mixed_p95 = percentile(load.result.latencies_ms, 0.95)
    echo_p95 = percentile(echo_run.result.latencies_ms, 0.95)
    print(
        f"  mixed workload at {load.offered_per_s:.0f}/s offered: p50 "
        f"{percentile(load.result.latencies_ms, 0.5):.1f} ms, p95 {mixed_p95:.1f} ms, p99 "
        f"{percentile(load.result.latencies_ms, 0.99):.1f} ms (target p95 <= 100 ms); echo p95 "
        f"{echo_p95:.2f} ms; errors {load.errors or 'none'}"
    )
    rate = hits["repeat_hit"] / max(hits["repeat"], 1)
    print(f"  cache hit on the repeated share: {rate:.0%} (target >= 70%)")
    print(
        f"  search at {searched.offered_per_s:.0f}/s: p50 "
        f"{percentile(searched.result.latencies_ms, 0.5):.1f} ms, p95 "
        f"{percentile(searched.result.latencies_ms, 0.95):.1f} ms (target p95 <= 50 ms); "
        f"errors {searched.errors or 'none'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receipts", type=int, default=10_000_000)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=120.0)
    parser.add_argument("--rounds", type=int, default=30, help="runs of each shape, PQL vs SQL")
    parser.add_argument("--keep", help="database name to keep (and reuse when it exists)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
