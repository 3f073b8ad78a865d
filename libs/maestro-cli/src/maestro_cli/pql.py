"""`maestro pql run|explain|search`: PQL from the command line (table or CSV output).

Exit codes: 0 ok, 1 the query was refused (not PQL, or a guardrail), 2 the service could not
be reached or failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

import grpc
from google.protobuf import struct_pb2

from maestro_cli.fleet import client_identity, read_endpoint
from maestro_cli.paths import data_dir

EXIT_OK, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2
_REFUSED = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
)


def add_commands(commands: Any) -> None:
    """Register `pql` and its subcommands on the top-level subparsers."""
    pql = commands.add_parser("pql", help="provenance query language").add_subparsers(
        dest="pql_command", required=True
    )
    run = pql.add_parser("run", help="run a PQL query and print its rows")
    _common(run)
    run.add_argument("query", help='the PQL text, e.g. "FIND receipts SINCE 1d"')
    run.add_argument("--csv", action="store_true", help="stream CSV (export) instead of a table")
    run.set_defaults(func=_run)
    explain = pql.add_parser("explain", help="show the SQL, plan, cost and guardrails")
    _common(explain)
    explain.add_argument("query", help="the PQL text")
    explain.set_defaults(func=_explain)
    search = pql.add_parser("search", help="search receipts, decisions and executions")
    _common(search, params=False)
    search.add_argument("q", help="terms: digest:, task:, decision:, package:, execution:, words")
    search.add_argument(
        "--kind",
        action="append",
        choices=["receipt", "decision", "execution"],
        help="only this kind of result (repeatable; default: all)",
    )
    search.set_defaults(func=_search)


def _common(parser: argparse.ArgumentParser, *, params: bool = True) -> None:
    parser.add_argument("--tenant", required=True, help="tenant to query as")
    if params:
        parser.add_argument(
            "--param",
            "-p",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="bind :NAME (VALUE is JSON if it parses, else a string); repeatable",
        )
    parser.add_argument(
        "--address",
        default=os.environ.get("MC_PQL_ADDRESS"),
        help="provenance service address (env MC_PQL_ADDRESS; default: the running dev fleet's)",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("MC_DEV_DATA_DIR", "var/dev"),
        help="the dev fleet's data directory (for its endpoints)",
    )


def _channel(args: argparse.Namespace) -> grpc.Channel:
    """mTLS to the provenance service with the CLI's SVID (see `client_identity`)."""
    address = args.address or read_endpoint(data_dir(args.data_dir), "pql") or "127.0.0.1:7301"
    return client_identity(data_dir(args.data_dir)).sync_channel(address, server="pql")


def parse_params(pairs: Sequence[str]) -> dict[str, struct_pb2.Value]:
    """`NAME=VALUE` pairs as `google.protobuf.Value`s (JSON scalars, else strings)."""
    values: dict[str, struct_pb2.Value] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--param {pair!r}: expected NAME=VALUE")
        value = struct_pb2.Value()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        if isinstance(parsed, bool):
            value.bool_value = parsed
        elif isinstance(parsed, int | float):
            value.number_value = parsed
        else:
            value.string_value = raw if not isinstance(parsed, str) else parsed
        values[name] = value
    return values


def _metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return (("x-mc-tenant", args.tenant),)


def _failed(exc: grpc.RpcError) -> int:
    code = exc.code()  # type: ignore[attr-defined]
    print(f"error: {code.name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
    if code in _REFUSED:
        return EXIT_REFUSED
    print("hint: is the fleet running? `scripts/dev-up.sh`", file=sys.stderr)
    return EXIT_ERROR


def _run(args: argparse.Namespace) -> int:
    from mc.pql.v1 import query_service_pb2 as q
    from mc.pql.v1 import query_service_pb2_grpc as q_grpc

    params = parse_params(args.param)
    with _channel(args) as channel:
        stub = q_grpc.QueryServiceStub(channel)
        try:
            if args.csv:
                return _export(stub, q.ExportQueryRequest(query=args.query, params=params), args)
            reply = stub.Query(
                q.QueryRequest(query=args.query, params=params),
                metadata=_metadata(args),
                timeout=60,
            )
        except grpc.RpcError as exc:
            return _failed(exc)
    print_table(reply.result, sys.stdout)
    return EXIT_OK


def _export(stub: Any, request: Any, args: argparse.Namespace) -> int:
    for message in stub.ExportQuery(request, metadata=_metadata(args), timeout=600):
        if message.done:
            if message.truncated:
                print(
                    f"warning: truncated at the row cap; about {message.total_estimate} rows "
                    "matched",
                    file=sys.stderr,
                )
            continue
        sys.stdout.write(message.csv_chunk.decode())
    sys.stdout.flush()
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    from mc.pql.v1 import query_service_pb2 as q
    from mc.pql.v1 import query_service_pb2_grpc as q_grpc

    with _channel(args) as channel:
        try:
            reply = q_grpc.QueryServiceStub(channel).ExplainQuery(
                q.ExplainQueryRequest(query=args.query, params=parse_params(args.param)),
                metadata=_metadata(args),
                timeout=30,
            )
        except grpc.RpcError as exc:
            return _failed(exc)
    print(f"PQL {reply.grammar_version}")
    print(f"SQL:    {reply.sql}")
    for name, value in sorted(reply.params.items()):
        print(f"  %({name})s = {value}")
    print(
        f"cost:   about {reply.estimated_cost:.0f} rows read (estimated in "
        f"{reply.estimate_ms:.2f} ms from table statistics); most from {reply.heaviest_step}"
    )
    plan = json.loads(reply.plan_json or "{}")
    if plan:
        print(
            f"plan:   {plan.get('Node Type', '?')}, Postgres cost {plan.get('Total Cost', 0):.0f},"
            f" ~{plan.get('Plan Rows', 0)} rows (EXPLAIN, not run)"
        )
    print("guardrails:")
    for line in reply.guardrails:
        print(f"  - {line}")
    if reply.accepted:
        print("verdict: would run")
        return EXIT_OK
    print(f"verdict: refused: {reply.rejection}")
    return EXIT_REFUSED


def _search(args: argparse.Namespace) -> int:
    from mc.pql.v1 import query_service_pb2 as q
    from mc.pql.v1 import query_service_pb2_grpc as q_grpc

    with _channel(args) as channel:
        try:
            reply = q_grpc.QueryServiceStub(channel).SearchProvenance(
                q.SearchProvenanceRequest(q=args.q, kinds=args.kind or []),
                metadata=_metadata(args),
                timeout=30,
            )
        except grpc.RpcError as exc:
            return _failed(exc)
    for hit in reply.hits:
        at = hit.at.ToDatetime().isoformat() + "Z"
        print(f"{at}  {hit.kind:<9}  {hit.id}  {hit.title}")
    if not reply.hits:
        print("no matches", file=sys.stderr)
    return EXIT_OK


def cell_text(cell: Any) -> str:
    kind = cell.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "time_value":
        return str(cell.time_value.ToDatetime().isoformat()) + "Z"
    if kind == "duration_value":
        return f"{cell.duration_value.ToTimedelta().total_seconds():g}s"
    if kind == "bool_value":
        return "true" if cell.bool_value else "false"
    if kind == "double_value":
        return f"{cell.double_value:.6g}"
    return str(getattr(cell, kind))


def print_table(result: Any, out: IO[str]) -> None:
    """A query result as an aligned text table, then its bounds (truncation, guardrails)."""
    header = [c.name for c in result.columns]
    body = [[cell_text(c) for c in row.cells] for row in result.rows]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in body:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)
    summary = f"({len(body)} row{'s' if len(body) != 1 else ''}"
    if result.truncated:
        summary += f", TRUNCATED at the row cap: about {result.total_estimate} matched"
    if result.cached:
        summary += ", cached"
    print(summary + ")", file=out)
    for line in result.guardrails:
        print(f"note: {line}", file=out)
