"""The `maestro` command line: `dev up` runs the local fleet; `receipts ...` verifies receipt
logs, exports keys and receipts, and runs a witness."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from maestro_cli import keys as keys_cli
from maestro_cli import limiter, pkg, pql
from maestro_cli.fleet import Fleet, FleetError, Interrupted, client_identity, read_endpoint
from maestro_cli.paths import data_dir
from mc_common.devinfra import InfraError
from mc_common.identity import IdentityError
from mc_common.manifest import ManifestError

EXIT_OK, EXIT_BROKEN, EXIT_ERROR = 0, 1, 2


def _dev_up(args: argparse.Namespace) -> int:
    fleet = Fleet(
        data_dir(args.data_dir),
        only=tuple(args.only or ()),
        embedded=args.embedded,
        stop_grace_s=args.stop_grace,
        any_ports=args.any_ports,
        announce=lambda line: print(line, flush=True),
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: fleet.stopping.set())
    try:
        with fleet.running():
            rows = fleet.endpoints()
            width = max(len(r[0]) for r in rows)
            print(f"{'component'.ljust(width)}  endpoint")
            for name, endpoint, extra in rows:
                print(f"{name.ljust(width)}  {endpoint}  {extra}".rstrip())
            print("ready: the fleet is up; Ctrl-C stops it", flush=True)
            fleet.stopping.wait()
            print("stopping...", flush=True)
    except Interrupted:
        print("stopped before the fleet was ready", flush=True)
        return EXIT_OK if not fleet.killed else EXIT_BROKEN
    except (FleetError, InfraError, ManifestError) as exc:
        print(f"maestro dev up failed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print("stopped", flush=True)
    return EXIT_OK if not fleet.killed else EXIT_BROKEN


def _pql_address(args: argparse.Namespace) -> str:
    return str(args.address or read_endpoint(data_dir(args.data_dir), "pql") or "127.0.0.1:7301")


def _receipts_verify(args: argparse.Namespace) -> int:
    from maestro_cli import receipts

    if args.offline:
        return receipts.verify_offline(args)
    return receipts.verify_log(args, _pql_address(args))


def _receipts_keys(args: argparse.Namespace) -> int:
    from maestro_cli import receipts

    return receipts.export_keys(args, _pql_address(args))


def _receipts_export(args: argparse.Namespace) -> int:
    from maestro_cli import receipts

    return receipts.export_receipts(args, _pql_address(args))


def _receipts_witness(args: argparse.Namespace) -> int:
    import asyncio

    from maestro_cli.witness import Witness, run_witness
    from mc_common.receipts.note import COSIGNATURE_V1, NoteSigner, NoteVerifier

    signer = NoteSigner.from_pem(args.name, Path(args.key).read_bytes(), sig_type=COSIGNATURE_V1)
    state = Path(args.state or data_dir(args.data_dir) / "witness" / "state.json")
    witness = Witness(NoteVerifier.parse(args.log_key), signer, state, lambda *_: [])
    print(f"witness {signer.verifier.vkey()} watching {args.topic}", flush=True)

    async def run() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await run_witness(
            witness,
            bootstrap=args.bootstrap,
            address=_pql_address(args),
            topic=args.topic,
            cosigned_topic=args.cosigned_topic,
            group_id=args.group,
            stop=stop,
            identity=client_identity(data_dir(args.data_dir)),
        )

    asyncio.run(run())
    return EXIT_OK


def _data_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("MC_DEV_DATA_DIR", "var/dev"),
        metavar="DIR",
        help="the dev fleet's directory (logs, keys, endpoints.json); relative paths are from "
        "the repository root (env MC_DEV_DATA_DIR; default var/dev)",
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("maestro-cli")
    except PackageNotFoundError:  # running from a source tree without metadata
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maestro", description="Maestro Conductor CLI.")
    parser.add_argument(
        "--version", action="version", version=f"maestro {_version()}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="local development fleet").add_subparsers(
        dest="dev_command", required=True
    )
    up = dev.add_parser("up", help="start the whole fleet locally until Ctrl-C")
    _data_dir_option(up)
    up.add_argument(
        "--only",
        action="append",
        metavar="SERVICE",
        help="start only this service (repeatable); an unknown name lists the services",
    )
    up.add_argument(
        "--embedded",
        action="store_true",
        help="use embedded Postgres and Redis even when MC_POSTGRES_DSN / MC_REDIS_URL or the "
        "machine's servers are available",
    )
    up.add_argument(
        "--any-ports",
        action="store_true",
        help="give services free ports instead of their declared ones (several fleets on one "
        "machine; other commands find them through endpoints.json)",
    )
    up.add_argument(
        "--stop-grace",
        type=float,
        default=float(os.environ.get("MC_DEV_STOP_GRACE_S", "10")),
        metavar="SECONDS",
        help="on Ctrl-C, how long services get to stop before they are killed "
        "(env MC_DEV_STOP_GRACE_S; default 10)",
    )
    up.set_defaults(func=_dev_up)

    receipts = commands.add_parser("receipts", help="execution receipts").add_subparsers(
        dest="receipts_command", required=True
    )

    def pql_options(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--address",
            default=os.environ.get("MC_PQL_ADDRESS"),
            help="provenance service address (env MC_PQL_ADDRESS; default: the dev fleet's)",
        )
        _data_dir_option(command)

    verify = receipts.add_parser(
        "verify",
        help="verify a tenant's receipt log: consistency with the last checkpoint seen, then "
        "an audit of the receipts since (exit 0 intact, 1 broken, 2 cannot ask, 3 no receipts)",
    )
    verify.add_argument("--tenant", required=True, help="the tenant whose log to verify")
    pql_options(verify)
    verify.add_argument(
        "--checkpoint",
        help="file holding the last checkpoint accepted (default: <data-dir>/receipts/<tenant>"
        ".checkpoint); updated when the new one verifies",
    )
    verify.add_argument(
        "--checkpoint-key",
        help="the log's C2SP verifier key (default: pinned on first use in the data dir)",
    )
    verify.add_argument("--full", action="store_true", help="audit every receipt, not only new")
    verify.add_argument(
        "--offline", metavar="DIR", help="verify an export (maestro receipts export) offline"
    )
    verify.set_defaults(func=_receipts_verify)

    keys = receipts.add_parser("keys", help="export the published verification keys (JSON)")
    keys.add_argument("--tenant", required=True, help="the tenant whose keys to export")
    keys.add_argument("--out", required=True, metavar="FILE", help="JSON file to write")
    pql_options(keys)
    keys.set_defaults(func=_receipts_keys)

    export = receipts.add_parser(
        "export", help="export a tenant's receipts, checkpoint and keys for offline verification"
    )
    export.add_argument("--tenant", required=True, help="the tenant whose receipts to export")
    export.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    pql_options(export)
    export.set_defaults(func=_receipts_export)

    witness = receipts.add_parser(
        "witness", help="co-sign consistent checkpoints from Kafka; refuse forks"
    )
    witness.add_argument("--key", required=True, help="PEM Ed25519 private key of the witness")
    witness.add_argument(
        "--name",
        default="witness.maestro-conductor.dev/w1",
        help="the witness's key name in its cosignatures",
    )
    witness.add_argument("--log-key", required=True, help="the log's C2SP verifier key")
    witness.add_argument(
        "--bootstrap",
        default=os.environ.get("MC_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (env MC_KAFKA_BOOTSTRAP)",
    )
    witness.add_argument(
        "--topic", default="mc.receipts.checkpoints", help="topic checkpoints are read from"
    )
    witness.add_argument(
        "--cosigned-topic",
        default="mc.receipts.checkpoints.cosigned",
        help="topic cosigned checkpoints are written to",
    )
    witness.add_argument("--group", default="maestro-witness", help="Kafka consumer group")
    witness.add_argument("--state", help="state file (default: <data-dir>/witness/state.json)")
    pql_options(witness)
    witness.set_defaults(func=_receipts_witness)

    pql.add_commands(commands)
    keys_cli.add_commands(commands)
    limiter.add_commands(commands)
    pkg.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except IdentityError as exc:  # no usable SVID for the CLI
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
