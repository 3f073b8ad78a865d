"""`maestro pkg init|pack|sign|verify|inspect`: author, sign and check workflow packages
(`NAME-VERSION.mwpkg.tgz`) locally. Publishing and installing go through the marketplace
service (see docs/services/marketplace.md).

Exit codes: 0 ok, 1 the package is refused (malformed, unsigned, signature invalid), 2 a usage
or file error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mc_common.errors import MCError
from mc_common.packages import (
    PackageVerification,
    pack_directory,
    parse_manifest,
    sign_package,
    verify_package,
)
from mc_common.signing import KeyRing, PemSigner, PublicKey

EXIT_OK, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2

_MANIFEST = """apiVersion: mc.marketplace/v1
name: {name}
version: 0.1.0
description: {description}
entrypoints:
  - name: run
    file: workflows/run.yaml
inputs: []
permissions: [receipts:write]
minPlatformVersion: 1.0.0
tags: []
"""


def add_commands(commands: Any) -> None:
    """Register `pkg` and its subcommands on the top-level subparsers."""
    pkg = commands.add_parser("pkg", help="signed workflow packages").add_subparsers(
        dest="pkg_command", required=True
    )
    init = pkg.add_parser("init", help="scaffold a package directory")
    init.add_argument("directory", type=Path, help="directory to create")
    init.add_argument("--name", required=True, help="package name, e.g. acme/nightly-etl")
    init.add_argument(
        "--description",
        default="A Maestro Conductor workflow package.",
        help="the manifest description",
    )
    init.set_defaults(func=_init)
    pack = pkg.add_parser("pack", help="pack a directory into NAME-VERSION.mwpkg.tgz")
    pack.add_argument("directory", type=Path, help="the package directory")
    pack.add_argument("-o", "--output-dir", type=Path, default=Path("."), help="where to write")
    pack.set_defaults(func=_pack)
    sign = pkg.add_parser("sign", help="add a key signature and an in-toto attestation")
    sign.add_argument("package", type=Path, help="the .mwpkg.tgz to sign (rewritten in place)")
    sign.add_argument("--key", type=Path, required=True, help="PEM ECDSA P-256 private key")
    sign.add_argument("--builder", help="builder id for SLSA provenance v1 (e.g. a CI URL)")
    sign.add_argument("--source-uri", help="source repository of the build")
    sign.add_argument("--source-digest", help="source commit (sha1) or sha256")
    sign.set_defaults(func=_sign)
    for name, help_text in (
        ("verify", "verify a package against trusted keys (fails closed)"),
        ("inspect", "verify, then show signer, builder, source and predicates"),
    ):
        cmd = pkg.add_parser(name, help=help_text)
        cmd.add_argument("package", type=Path, help="the .mwpkg.tgz")
        cmd.add_argument(
            "--key", type=Path, action="append", default=[], help="trusted PEM public key"
        )
        cmd.add_argument("--trusted-root", type=Path, help="Sigstore trusted_root.json (keyless)")
        cmd.add_argument("--identity", help="expected keyless signer identity (SAN)")
        cmd.add_argument("--issuer", help="expected keyless OIDC issuer")
        cmd.set_defaults(func=_verify if name == "verify" else _inspect)


def _init(args: argparse.Namespace) -> int:
    directory: Path = args.directory
    if directory.exists() and any(directory.iterdir()):
        print(f"error: {directory} exists and is not empty", file=sys.stderr)
        return EXIT_ERROR
    (directory / "workflows").mkdir(parents=True, exist_ok=True)
    (directory / "examples").mkdir(exist_ok=True)
    manifest = _MANIFEST.format(name=args.name, description=args.description)
    parse_manifest(manifest.encode())  # the scaffold is valid by construction
    (directory / "manifest.yaml").write_text(manifest)
    (directory / "README.md").write_text(f"# {args.name}\n\n{args.description}\n")
    (directory / "workflows" / "run.yaml").write_text("steps:\n  - name: hello\n")
    (directory / "examples" / "basic.yaml").write_text("# inputs for `run`\n{}\n")
    print(f"created {directory}: edit manifest.yaml, then `maestro pkg pack {directory}`")
    return EXIT_OK


def _pack(args: argparse.Namespace) -> int:
    try:
        archive = pack_directory(args.directory)
        manifest = parse_manifest((args.directory / "manifest.yaml").read_bytes())
    except MCError as exc:
        print(f"refused: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    out = args.output_dir / manifest.archive_name
    out.write_bytes(archive)
    print(f"wrote {out} ({len(archive)} bytes, unsigned: `maestro pkg sign {out} --key KEY`)")
    return EXIT_OK


def _sign(args: argparse.Namespace) -> int:
    try:
        signer = PemSigner.from_file(args.key)
        signed = sign_package(
            args.package.read_bytes(),
            signer,
            builder=args.builder,
            source_uri=args.source_uri,
            source_digest=args.source_digest,
        )
    except MCError as exc:
        print(f"refused: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    args.package.write_bytes(signed)
    print(f"signed {args.package} with key {signer.key_id}")
    return EXIT_OK


def _check(args: argparse.Namespace) -> PackageVerification | int:
    """The verified package, or the exit code after printing why it was refused."""
    try:
        keys = KeyRing([PublicKey.from_file(path) for path in args.key])
        return verify_package(
            args.package.read_bytes(),
            keys,
            trusted_root=args.trusted_root,
            identity=args.identity,
            issuer=args.issuer,
        )
    except MCError as exc:
        print(f"refused: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _verify(args: argparse.Namespace) -> int:
    result = _check(args)
    if isinstance(result, int):
        return result
    print(
        f"verified {result.manifest.name}@{result.manifest.version} sha256:{result.content_digest}"
    )
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    result = _check(args)
    if isinstance(result, int):
        return result
    manifest = result.manifest
    rows = [
        ("package", f"{manifest.name}@{manifest.version}"),
        ("description", manifest.description),
        ("content digest", f"sha256:{result.content_digest}"),
        ("verified signer", ", ".join(result.signer_key_ids) or "-"),
        (
            "keyless identity",
            ", ".join(result.keyless_identities)
            + (f" ({result.keyless_issuer})" if result.keyless_issuer else "")
            if result.keyless_identities
            else "-",
        ),
        ("builder", result.builder or "- (no SLSA provenance)"),
        ("source", f"{result.source or '-'} {result.source_digest or ''}".strip()),
        ("predicate types", ", ".join(result.predicate_types) or "-"),
        ("entrypoints", ", ".join(f"{e.name} ({e.file})" for e in manifest.entrypoints)),
        ("permissions", ", ".join(manifest.permissions) or "-"),
        ("min platform", manifest.min_platform_version),
        ("files", str(len(result.files))),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    return EXIT_OK
