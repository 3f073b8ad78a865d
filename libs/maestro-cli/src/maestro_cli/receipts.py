"""`maestro receipts ...`: verify a tenant's receipt log, export keys and receipts, verify an
export offline.

`verify` keeps the last checkpoint it accepted (a C2SP signed note) in a file and, on the next
run, proves the new checkpoint consistent with it (RFC 9162), so a truncated, rewritten or
forked log is detected; then it audits the receipts added since (streamed, with progress). The
checkpoint key is pinned on first use (or given with `--checkpoint-key`).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc

from maestro_cli import paths
from maestro_cli.fleet import client_identity
from mc.pql.v1 import provenance_pb2 as pb
from mc.pql.v1 import receipt_log_service_pb2 as log_pb
from mc.pql.v1 import receipt_log_service_pb2_grpc as log_grpc
from mc_common.receipts import ChainLink, verify_chain
from mc_common.receipts.merkle import (
    ProofError,
    extend_frontier,
    fold,
    leaf_hash,
    verify_consistency,
)
from mc_common.receipts.note import Checkpoint, NoteError, NoteVerifier, open_checkpoint
from mc_common.signing import KeyRing

EXIT_OK, EXIT_BROKEN, EXIT_ERROR, EXIT_NO_RECEIPTS = 0, 1, 2, 3


class VerifyError(Exception):
    """The log is not what an earlier checkpoint promised (exit 1)."""


@dataclass(frozen=True)
class Target:
    address: str
    tenant: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-mc-tenant", self.tenant),)


def state_dir(data_dir: str) -> Path:
    return paths.data_dir(data_dir) / "receipts"


def _progress(out: TextIO, done: int, total: int) -> None:
    if not out.isatty() and done < total:
        return
    width = 30
    filled = width if total == 0 else width * done // total
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} receipts")
    if done >= total:
        out.write("\n")
    out.flush()


def _pinned_key(
    args: argparse.Namespace, stub: log_grpc.ReceiptLogServiceStub, target: Target
) -> NoteVerifier:
    """The checkpoint key: `--checkpoint-key`, else the one pinned on first use."""
    if args.checkpoint_key:
        return NoteVerifier.parse(args.checkpoint_key)
    pin = state_dir(args.data_dir) / "checkpoint.vkey"
    if pin.exists():
        return NoteVerifier.parse(pin.read_text())
    keys = stub.GetVerificationKeys(
        log_pb.GetVerificationKeysRequest(), metadata=target.metadata, timeout=30
    )
    verifier = NoteVerifier.parse(keys.checkpoint_verifier_key)
    pin.parent.mkdir(parents=True, exist_ok=True)
    pin.write_text(verifier.vkey() + "\n")
    print(f"pinned checkpoint key {verifier.vkey()} (trust on first use)")
    return verifier


def verify_log(args: argparse.Namespace, address: str) -> int:
    """`maestro receipts verify --tenant T`: exit 0 consistent, 1 broken, 2 cannot ask, 3 the
    tenant has no receipts."""
    target = Target(address, args.tenant)
    saved_path = (
        Path(args.checkpoint)
        if args.checkpoint
        else state_dir(args.data_dir) / f"{args.tenant}.checkpoint"
    )
    try:
        with _channel(args, address) as channel:
            stub = log_grpc.ReceiptLogServiceStub(channel)
            verifier = _pinned_key(args, stub, target)
            return _verify(args, stub, target, verifier, saved_path)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            print(f"log of {args.tenant} is BROKEN: {details}")
            return EXIT_BROKEN
        print(f"error: {code.name}: {details}{hint(code, address)}", file=sys.stderr)
        return EXIT_ERROR
    except VerifyError as exc:
        print(f"log of {args.tenant} is BROKEN: {exc}")
        return EXIT_BROKEN


def _verify(
    args: argparse.Namespace,
    stub: log_grpc.ReceiptLogServiceStub,
    target: Target,
    verifier: NoteVerifier,
    saved_path: Path,
) -> int:
    reply = stub.GetCheckpoint(log_pb.GetCheckpointRequest(), metadata=target.metadata, timeout=30)
    try:
        new, _ = open_checkpoint(reply.checkpoint.note, verifier)
    except NoteError as exc:
        raise VerifyError(f"the checkpoint does not verify with the pinned key: {exc}") from exc
    if new.origin != f"{verifier.name}/{target.tenant}":
        raise VerifyError(f"the checkpoint is for another log: {new.origin!r}")
    old: Checkpoint | None = None
    if saved_path.exists():
        try:
            old, _ = open_checkpoint(saved_path.read_text(), verifier)
        except NoteError as exc:
            print(
                f"error: the saved checkpoint {saved_path} does not verify: {exc}", file=sys.stderr
            )
            return EXIT_ERROR
        check_consistent(stub, target, old, new)
    if new.size == 0:
        print(f"tenant {target.tenant} has no receipts: nothing to verify")
        return EXIT_NO_RECEIPTS
    start = 0 if args.full or old is None else max(0, old.size - 1)
    failures = audit(stub, target, start, new.size)
    if failures:
        print(f"log of {target.tenant} is BROKEN ({len(failures)} failures):")
        for failure in failures:
            where = f"#{failure.sequence} " if failure.sequence else ""
            print(f"  {where}{failure.code}: {failure.message}")
        return EXIT_BROKEN
    saved_path.parent.mkdir(parents=True, exist_ok=True)
    saved_path.write_text(reply.checkpoint.note)
    since = "" if old is None else f", consistent with the saved checkpoint of size {old.size}"
    print(
        f"log of {target.tenant} is intact: size {new.size}, root "
        f"{base64.b64encode(new.root).decode()}{since}"
    )
    return EXIT_OK


def hint(code: grpc.StatusCode, address: str) -> str:
    """What to try next after a failed call, as a suffix for the error line."""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return (
            f"\nhint: nothing answers at {address}: is the fleet running? Start it with "
            "`scripts/dev-up.sh`, or pass --address (env MC_PQL_ADDRESS)"
        )
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return "\nhint: the CLI calls with the dev fleet's SVID under --data-dir (or MC_IDENTITY_*)"
    return ""


def check_consistent(
    stub: log_grpc.ReceiptLogServiceStub, target: Target, old: Checkpoint, new: Checkpoint
) -> None:
    """Raise `VerifyError` unless `new` extends `old` (RFC 9162 consistency proof)."""
    if new.size < old.size:
        raise VerifyError(
            f"TRUNCATED: the log has {new.size} receipts, an earlier checkpoint had {old.size}"
        )
    hashes: list[bytes] = []
    if 0 < old.size < new.size:
        proof = stub.GetConsistencyProof(
            log_pb.GetConsistencyProofRequest(first_size=old.size, second_size=new.size),
            metadata=target.metadata,
            timeout=30,
        )
        hashes = list(proof.hashes)
    try:
        verify_consistency(old.size, new.size, old.root, new.root, hashes)
    except ProofError as exc:
        raise VerifyError(
            f"FORKED or REWRITTEN: the checkpoint of size {new.size} is not an extension of the "
            f"one of size {old.size} ({exc})"
        ) from exc


def audit(
    stub: log_grpc.ReceiptLogServiceStub, target: Target, start: int, size: int
) -> list[pb.VerificationFailure]:
    """Stream the service's audit from `start`, with a progress bar; returns the failures."""
    failures: list[pb.VerificationFailure] = []
    summary = None
    # No deadline: the stream makes progress page by page, however long the log.
    for message in stub.AuditLog(log_pb.AuditLogRequest(start=start), metadata=target.metadata):
        event = message.WhichOneof("event")
        if event == "progress":
            _progress(sys.stdout, message.progress.verified, message.progress.total)
        elif event == "failure":
            failures.append(message.failure)
        elif event == "summary":
            summary = message.summary
    if summary is None:
        raise VerifyError("the audit ended without a summary")
    if summary.checkpoint.size < size:
        raise VerifyError(f"the audit covered {summary.checkpoint.size} receipts, not {size}")
    return failures


# -- keys, export and offline verification ------------------------------------------------------


def _channel(args: argparse.Namespace, address: str) -> grpc.Channel:
    """mTLS to the provenance service with the CLI's SVID (see `client_identity`)."""
    return client_identity(paths.data_dir(args.data_dir)).sync_channel(address, server="pql")


def export_keys(args: argparse.Namespace, address: str) -> int:
    """`maestro receipts keys --tenant T --out FILE`: the published verification keys."""
    target = Target(address, args.tenant)
    try:
        with _channel(args, address) as channel:
            keys = log_grpc.ReceiptLogServiceStub(channel).GetVerificationKeys(
                log_pb.GetVerificationKeysRequest(), metadata=target.metadata, timeout=30
            )
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return EXIT_ERROR
    Path(args.out).write_text(json.dumps(keys_document(keys), indent=2) + "\n")
    print(f"wrote {len(keys.receipt_keys)} receipt keys and the checkpoint key to {args.out}")
    return EXIT_OK


def keys_document(keys: log_pb.GetVerificationKeysResponse) -> dict[str, Any]:
    return {
        "receipt_keys": [
            {
                "key_id": k.key_id,
                "algorithm": k.algorithm,
                "public_key_pem": k.public_key_pem,
                "jwk": json.loads(k.jwk),
                "current": k.current,
                "not_before": k.not_before.ToJsonString() if k.HasField("not_before") else None,
                "not_after": k.not_after.ToJsonString() if k.HasField("not_after") else None,
            }
            for k in keys.receipt_keys
        ],
        "checkpoint_verifier_key": keys.checkpoint_verifier_key,
        "checkpoint_key_pem": keys.checkpoint_key_pem,
    }


def export_receipts(args: argparse.Namespace, address: str) -> int:
    """`maestro receipts export --tenant T --out DIR`: keys.json, checkpoint, receipts.jsonl."""
    target = Target(address, args.tenant)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with _channel(args, address) as channel:
            stub = log_grpc.ReceiptLogServiceStub(channel)
            keys = stub.GetVerificationKeys(
                log_pb.GetVerificationKeysRequest(), metadata=target.metadata, timeout=30
            )
            checkpoint = stub.GetCheckpoint(
                log_pb.GetCheckpointRequest(), metadata=target.metadata, timeout=30
            ).checkpoint
            with (out / "receipts.jsonl").open("w") as sink:
                for entry in _entries(stub, target, checkpoint.size):
                    sink.write(json.dumps(_entry_json(entry)) + "\n")
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return EXIT_ERROR
    (out / "keys.json").write_text(json.dumps(keys_document(keys), indent=2) + "\n")
    (out / "checkpoint").write_text(checkpoint.note)
    print(f"exported {checkpoint.size} receipts of {args.tenant} to {out}")
    return EXIT_OK


def _entries(
    stub: log_grpc.ReceiptLogServiceStub, target: Target, size: int
) -> Iterator[log_pb.LogEntry]:
    start = 0
    while start < size:
        page = stub.GetLogEntries(
            log_pb.GetLogEntriesRequest(start=start, end=size), metadata=target.metadata, timeout=60
        ).entries
        if not page:
            return
        yield from page
        start = page[-1].leaf_index + 1


def _entry_json(entry: log_pb.LogEntry) -> dict[str, Any]:
    return {
        "leaf_index": entry.leaf_index,
        "digest": entry.digest,
        "envelope": entry.envelope.decode() if entry.envelope else None,
        "client_envelope": entry.client_envelope.decode() if entry.client_envelope else None,
    }


@dataclass
class OfflineReport:
    checked: int
    failures: list[str]


def verify_export(directory: Path, tenant: str) -> OfflineReport:
    """Verify an export with only its published keys: every receipt's service signature and
    chain link, and the root of the receipts' digests against the signed checkpoint."""
    keys = json.loads((directory / "keys.json").read_text())
    ring = KeyRing()
    for key in keys["receipt_keys"]:
        ring.add_pem(key["public_key_pem"])
    verifier = NoteVerifier.parse(keys["checkpoint_verifier_key"])
    failures: list[str] = []
    checkpoint, _ = open_checkpoint((directory / "checkpoint").read_text(), verifier)
    if checkpoint.origin != f"{verifier.name}/{tenant}":
        failures.append(f"the checkpoint is for another log: {checkpoint.origin!r}")
    frontier: list[bytes] = []
    anchor: ChainLink | None = None
    count = 0
    with (directory / "receipts.jsonl").open() as source:
        for line in source:
            entry = json.loads(line)
            if entry["leaf_index"] != count:
                failures.append(f"leaf {count} is missing from the export")
                break
            if entry["envelope"] is None:
                failures.append(f"#{count + 1} RECEIPT_MISSING: the service no longer has it")
                break
            report = verify_chain([entry["envelope"]], ring, expected_tenant=tenant, after=anchor)
            for problem in report.problems:
                failures.append(
                    f"#{problem.sequence or count + 1} {problem.code}: {problem.message}"
                )
            digest = hashlib.sha256(
                base64.b64decode(json.loads(entry["envelope"])["payload"])
            ).hexdigest()
            frontier = extend_frontier(count, frontier, leaf_hash(bytes.fromhex(digest)))
            anchor = ChainLink(tenant, count + 1, digest)
            count += 1
    if count != checkpoint.size:
        failures.append(f"the export has {count} receipts, the checkpoint {checkpoint.size}")
    elif count and fold(frontier) != checkpoint.root:
        failures.append("ROOT_MISMATCH: the receipts do not make the signed checkpoint's root")
    return OfflineReport(count, failures)


def verify_offline(args: argparse.Namespace) -> int:
    try:
        report = verify_export(Path(args.offline), args.tenant)
    except (OSError, ValueError, KeyError, NoteError) as exc:
        print(f"error: cannot read the export: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if report.failures:
        print(f"export of {args.tenant} is BROKEN:")
        for failure in report.failures:
            print(f"  {failure}")
        return EXIT_BROKEN
    print(f"export of {args.tenant} verifies: {report.checked} receipts, signed root matches")
    return EXIT_OK
