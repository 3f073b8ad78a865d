"""The `maestro` command line: `dev up` runs the local fleet; `receipts verify` checks a chain."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

import grpc

from maestro_cli import pql
from maestro_cli.fleet import Fleet, read_endpoint

EXIT_OK, EXIT_BROKEN, EXIT_ERROR = 0, 1, 2


def _dev_up(args: argparse.Namespace) -> int:
    fleet = Fleet(Path(args.data_dir).resolve(), only=tuple(args.only or ()))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with fleet.running():
            rows = fleet.endpoints()
            width = max(len(r[0]) for r in rows)
            print(f"{'component'.ljust(width)}  endpoint")
            for name, endpoint, extra in rows:
                print(f"{name.ljust(width)}  {endpoint}  {extra}".rstrip())
            print("ready: the fleet is up; Ctrl-C stops it", flush=True)
            stop.wait()
            print("stopping...", flush=True)
    except RuntimeError as exc:
        print(f"maestro dev up failed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print("stopped", flush=True)
    return EXIT_OK


def _receipts_verify(args: argparse.Namespace) -> int:
    from mc.pql.v1 import provenance_service_pb2 as svc
    from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc

    address = args.address or read_endpoint(Path(args.data_dir), "pql") or "127.0.0.1:7301"
    with grpc.insecure_channel(address) as channel:
        stub = svc_grpc.ProvenanceServiceStub(channel)
        try:
            reply = stub.VerifyChain(
                svc.VerifyChainRequest(), metadata=(("x-mc-tenant", args.tenant),), timeout=120
            )
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return EXIT_ERROR
    if reply.verification.valid:
        print(
            f"chain of {args.tenant} is intact: {reply.receipts_checked} receipts, "
            f"head {reply.head_digest or '(empty)'}"
        )
        return EXIT_OK
    print(
        f"chain of {args.tenant} is BROKEN from sequence {reply.first_broken_sequence} "
        f"({reply.receipts_checked} receipts read):"
    )
    for failure in reply.verification.failures:
        where = f"#{failure.sequence} " if failure.sequence else ""
        print(f"  {where}{failure.code}: {failure.message}")
    return EXIT_BROKEN


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maestro", description="Maestro Conductor CLI.")
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="local development fleet").add_subparsers(
        dest="dev_command", required=True
    )
    up = dev.add_parser("up", help="start the whole fleet locally until Ctrl-C")
    up.add_argument("--data-dir", default=os.environ.get("MC_DEV_DATA_DIR", "var/dev"))
    up.add_argument("--only", action="append", help="start only this service (repeatable)")
    up.set_defaults(func=_dev_up)

    receipts = commands.add_parser("receipts", help="execution receipts").add_subparsers(
        dest="receipts_command", required=True
    )
    verify = receipts.add_parser("verify", help="verify a tenant's receipt chain")
    verify.add_argument("--tenant", required=True)
    verify.add_argument(
        "--address",
        default=os.environ.get("MC_PQL_ADDRESS"),
        help="provenance service address (env MC_PQL_ADDRESS; default: the running dev fleet's)",
    )
    verify.add_argument("--data-dir", default=os.environ.get("MC_DEV_DATA_DIR", "var/dev"))
    verify.set_defaults(func=_receipts_verify)

    pql.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
