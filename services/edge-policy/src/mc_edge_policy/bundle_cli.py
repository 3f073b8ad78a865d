"""`mc-edge-policy-bundle`: build, verify, publish bundles and print migration notes.

    mc-edge-policy-bundle keygen --kid mc-2026-q4 --out key.pem
    mc-edge-policy-bundle build --src policies/ --key key.pem --kid mc-2026-q4 \\
        --keys trusted-keys.json --version 42 --out bundle.tar.gz
    mc-edge-policy-bundle verify bundle.tar.gz --keys trusted-keys.json
    mc-edge-policy-bundle notes bundle.tar.gz
    mc-edge-policy-bundle publish bundle.tar.gz --repo repo/ --new-repo

`build` refuses (exit 1, every reason on stderr) when lint, the policies' own tests, the
compile or the OPA-rules verification fail; CI runs it on every change to policies.
Exit codes: 0 ok, 1 refused or not verified, 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mc_edge_policy.builder import MigrationNote, build_bundle, load_sources, render_migration_notes
from mc_edge_policy.bundle import BundleFormatError, read_archive, read_manifest
from mc_edge_policy.compiler import PolicyCompileError
from mc_edge_policy.keys import keyring_json, load_keyring
from mc_edge_policy.signatures import SignatureError, SigningKey, verify_bundle_files

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def _keygen(args: argparse.Namespace) -> int:
    key = SigningKey.generate(args.kid)
    args.out.write_bytes(key.private_pem())
    args.out.chmod(0o600)
    entry = {"kid": args.kid, "algorithm": key.algorithm, "pem": key.public_pem().decode()}
    print(keyring_json([entry]))
    return EXIT_OK


def _build(args: argparse.Namespace) -> int:
    key = SigningKey.from_pem(args.kid, args.key.read_bytes())
    try:
        built = build_bundle(
            load_sources(args.src),
            key=key,
            verify_with=load_keyring(args.keys),
            version=args.version,
            revision=args.revision,
            valid_for=timedelta(days=args.valid_days),
        )
    except (PolicyCompileError, SignatureError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        for issue in getattr(exc, "issues", []):
            print(f"  {issue}", file=sys.stderr)
        return EXIT_REFUSED
    args.out.write_bytes(built.archive)
    print(
        json.dumps(
            {
                "sha256": built.digest,
                "version": args.version,
                "tests_passed": len(built.tests.passed),
                "key_id": built.key_id,
            }
        )
    )
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    try:
        files = read_archive(args.bundle.read_bytes())
        verified = verify_bundle_files(files, load_keyring(args.keys), now=datetime.now(UTC))
    except (BundleFormatError, SignatureError) as exc:
        print(f"not verified: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(json.dumps({"key_id": verified.key_id, "files": sorted(verified.files)}))
    return EXIT_OK


def _notes(args: argparse.Namespace) -> int:
    manifest = read_manifest(read_archive(args.bundle.read_bytes()))
    entries = manifest.metadata.get("mc", {}).get("migrations", [])
    print(render_migration_notes([MigrationNote(**entry) for entry in entries]), end="")
    return EXIT_OK


def _publish(args: argparse.Namespace) -> int:
    from mc_edge_policy.tuf_repo import TufRepository

    if not args.new_repo:
        print(
            "publishing into an existing repository needs its role keys (a KMS); this tool "
            "only creates new repositories (--new-repo)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    repo = TufRepository.create(args.repo)
    target = repo.publish(args.target, args.bundle.read_bytes())
    (args.repo / "root.json").write_bytes(repo.trusted_root())
    print(
        json.dumps(
            {
                "target": args.target,
                "sha256": target.hashes["sha256"],
                "trusted_root": str(args.repo / "root.json"),
            }
        )
    )
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mc-edge-policy-bundle", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="a new ES256 signing key; prints its key ring entry")
    keygen.add_argument("--kid", required=True)
    keygen.add_argument("--out", type=Path, required=True)
    keygen.set_defaults(run=_keygen)
    build = sub.add_parser("build", help="lint, test, compile, sign and verify a bundle")
    build.add_argument("--src", type=Path, required=True)
    build.add_argument("--key", type=Path, required=True)
    build.add_argument("--kid", required=True)
    build.add_argument("--keys", type=Path, required=True, help="trusted key ring (JSON)")
    build.add_argument("--version", type=int, required=True)
    build.add_argument("--revision")
    build.add_argument("--valid-days", type=float, default=7.0)
    build.add_argument("--out", type=Path, required=True)
    build.set_defaults(run=_build)
    verify = sub.add_parser("verify", help="verify a bundle as OPA does (plus key windows)")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--keys", type=Path, required=True)
    verify.set_defaults(run=_verify)
    notes = sub.add_parser("notes", help="print a bundle's migration notes (Markdown)")
    notes.add_argument("bundle", type=Path)
    notes.set_defaults(run=_notes)
    publish = sub.add_parser("publish", help="publish a bundle as a TUF target")
    publish.add_argument("bundle", type=Path)
    publish.add_argument("--repo", type=Path, required=True)
    publish.add_argument("--target", default="mc.tar.gz")
    publish.add_argument("--new-repo", action="store_true")
    publish.set_defaults(run=_publish)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
