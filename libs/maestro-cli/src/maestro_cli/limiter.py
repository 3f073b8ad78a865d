"""`maestro limiter rules apply|diff|list`: declarative limiter rules from files.

A rules file is envoyproxy/ratelimit's configuration format (one domain per file), with MC's
optional `mc` blocks; see docs/services/limiter.md. The limiter validates it (errors name the
file, line and reason) and answers what would change; `apply` shows that diff and then stores
the file, conditional on the revision the diff was made against. `apply_rule_files` is the
loader other tooling (the dev fleet, a chart hook) calls.

Exit codes: 0 ok (for `diff`: no changes), 1 the file was refused, or `diff` found changes,
2 the limiter could not be reached or failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import grpc

from maestro_cli.fleet import client_identity, read_endpoint
from maestro_cli.paths import data_dir

EXIT_OK, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2
OPERATOR_HEADER = "x-mc-principal"


def add_commands(commands: Any) -> None:
    """Register `limiter rules apply|diff|list` on the top-level subparsers."""
    limiter = commands.add_parser("limiter", help="rate limiter administration").add_subparsers(
        dest="limiter_command", required=True
    )
    rules = limiter.add_parser("rules", help="declarative rules files").add_subparsers(
        dest="rules_command", required=True
    )
    for name, help_text, func in (
        ("diff", "show what applying the files would change (a dry run)", _diff),
        ("apply", "show the diff, then store the files", _apply),
        ("list", "list stored domains, or the rules the files define", _list),
    ):
        sub = rules.add_parser(name, help=help_text)
        sub.add_argument(
            "-f",
            "--file",
            action="append",
            default=[],
            required=name != "list",
            help="rules file or directory of *.yaml files (repeatable)",
        )
        sub.add_argument(
            "--address",
            default=os.environ.get("MC_LIMITER_ADDRESS"),
            help="limiter address (env MC_LIMITER_ADDRESS; default: the running dev fleet's)",
        )
        sub.add_argument(
            "--data-dir",
            default=os.environ.get("MC_DEV_DATA_DIR", "var/dev"),
            help="the dev fleet's data directory (for its endpoints and the CLI's identity)",
        )
        sub.add_argument(
            "--operator",
            default=os.environ.get("MC_OPERATOR", "operator:cli"),
            help="operator principal sent in x-mc-principal (env MC_OPERATOR)",
        )
        sub.add_argument("--reason", default="", help="why, for the audit trail")
        sub.set_defaults(func=func)


def rule_files(paths: Iterable[str]) -> list[Path]:
    """The files named by ``paths`` (a directory stands for its *.yaml / *.yml files)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        else:
            out.append(path)
    return out


def apply_rule_files(
    channel: grpc.Channel,
    paths: Sequence[str],
    *,
    operator: str = "operator:cli",
    reason: str = "",
    dry_run: bool = False,
    out: IO[str] = sys.stdout,
) -> int:
    """Diff (and unless ``dry_run`` store) each file; prints the changes per domain. Returns
    the exit code. Raises ``grpc.RpcError`` when the limiter fails."""
    from mc.limiter.v1 import limiter_service_pb2 as svc
    from mc.limiter.v1 import limiter_service_pb2_grpc as svc_grpc

    stub = svc_grpc.LimiterServiceStub(channel)
    metadata = ((OPERATOR_HEADER, operator),)
    changed = False
    for path in rule_files(paths):
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"{path}: cannot read: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        request = svc.PutDomainConfigRequest(
            source=source, file_name=str(path), dry_run=True, reason=reason
        )
        try:
            plan = stub.PutDomainConfig(request, metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:  # type: ignore[attr-defined]
                _print_violations(exc, path)
                return EXIT_REFUSED
            raise
        print(f"domain {plan.domain} ({path}): {_summary(plan.changes)}", file=out)
        for line in plan.changes:
            print(f"  {line}", file=out)
        changed = changed or bool(plan.changes)
        if dry_run or (not plan.changes and plan.revision):
            continue
        request.dry_run = False
        request.expected_revision = plan.revision
        stored = stub.PutDomainConfig(request, metadata=metadata, timeout=30)
        print(f"  applied: revision {stored.revision}", file=out)
    return EXIT_REFUSED if dry_run and changed else EXIT_OK


def _summary(changes: Sequence[str]) -> str:
    if not changes:
        return "no changes"
    counts = {sign: sum(1 for c in changes if c.startswith(sign)) for sign in "+-~"}
    return ", ".join(
        f"{n} {word}"
        for n, word in (
            (counts["+"], "added"),
            (counts["~"], "changed"),
            (counts["-"], "removed"),
        )
        if n
    )


def _print_violations(exc: grpc.RpcError, path: Path) -> None:
    from mc_common.errors import status_details

    printed = False
    for detail in status_details(exc):
        for violation in getattr(detail, "field_violations", ()):
            print(f"{violation.field}: {violation.description}", file=sys.stderr)
            printed = True
    if not printed:
        print(f"{path}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]


def _address(args: argparse.Namespace) -> str:
    return str(args.address or read_endpoint(Path(args.data_dir), "limiter") or "127.0.0.1:7302")


def _channel(args: argparse.Namespace) -> grpc.Channel:
    """mTLS to the limiter with the CLI's SVID (see `client_identity`)."""
    identity = client_identity(data_dir(args.data_dir))
    return identity.sync_channel(_address(args), server="limiter")


def _run(args: argparse.Namespace, dry_run: bool) -> int:
    with _channel(args) as channel:
        try:
            return apply_rule_files(
                channel, args.file, operator=args.operator, reason=args.reason, dry_run=dry_run
            )
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            if exc.code() == grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                print("is the fleet running? `scripts/dev-up.sh`", file=sys.stderr)
            return EXIT_ERROR


def _diff(args: argparse.Namespace) -> int:
    return _run(args, dry_run=True)


def _apply(args: argparse.Namespace) -> int:
    return _run(args, dry_run=False)


def _list(args: argparse.Namespace) -> int:
    from mc.limiter.v1 import limiter_pb2 as pb
    from mc.limiter.v1 import limiter_service_pb2 as svc
    from mc.limiter.v1 import limiter_service_pb2_grpc as svc_grpc

    metadata = ((OPERATOR_HEADER, args.operator),)
    with _channel(args) as channel:
        stub = svc_grpc.LimiterServiceStub(channel)
        try:
            if not args.file:
                listed = stub.ListDomainConfigs(
                    svc.ListDomainConfigsRequest(), metadata=metadata, timeout=30
                )
                for config in listed.configs:
                    print(
                        f"{config.domain}  revision {config.revision}  {config.file_name}  "
                        f"by {config.updated_by}"
                    )
                return EXIT_OK
            for path in rule_files(args.file):
                request = svc.PutDomainConfigRequest(
                    source=path.read_text(encoding="utf-8"), file_name=str(path), dry_run=True
                )
                plan = stub.PutDomainConfig(request, metadata=metadata, timeout=30)
                state = f"stored at revision {plan.revision}" if plan.revision else "not stored"
                print(f"domain {plan.domain} ({path}): {len(plan.rules)} rules, {state}")
                for rule in plan.rules:
                    limit = rule.limits[0]
                    mode = pb.RuleMode.Name(rule.mode).removeprefix("RULE_MODE_").lower()
                    print(
                        f"  {rule.id}  {rule.description}  "
                        f"{limit.limit}/{limit.window_ms}ms  {mode}"
                    )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:  # type: ignore[attr-defined]
                _print_violations(exc, Path(args.file[0]))
                return EXIT_REFUSED
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return EXIT_ERROR
        except (OSError, UnicodeDecodeError) as exc:
            print(f"cannot read: {exc}", file=sys.stderr)
            return EXIT_REFUSED
    return EXIT_OK
