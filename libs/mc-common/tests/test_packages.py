"""Signed workflow packages: deterministic packing, the manifest schema, signing, and a
verification that fails closed on tampering, another signer, unsigned packages, path tricks and
oversized archives. The key signature is checked with `cryptography` on its own (what cosign
does), the attestation with securesystemslib and in-toto-attestation (independent readers)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.signer import SSlibKey

from mc_common.errors import InvalidArgument, MCError
from mc_common.packages import (
    MAX_FILE_BYTES,
    SLSA_PROVENANCE_V1,
    PackageFormatError,
    content_digest,
    pack_directory,
    pack_files,
    read_package,
    sign_package,
    verify_package,
)
from mc_common.packages.signing import PackageSignatureError
from mc_common.signing import KeyRing, PemSigner

MANIFEST = b"""apiVersion: mc.marketplace/v1
name: acme/nightly-etl
version: 1.2.0
description: Nightly extract, transform and load with signed receipts.
entrypoints:
  - name: run
    file: workflows/run.yaml
inputs:
  - name: source_bucket
    type: string
    required: true
permissions: [receipts:write, limits:check]
minPlatformVersion: 1.1.0
tags: [etl, nightly]
"""

FILES = {
    "manifest.yaml": MANIFEST,
    "README.md": b"# Nightly ETL\n",
    "workflows/run.yaml": b"steps: [extract, transform, load]\n",
    "examples/basic.yaml": b"source_bucket: s3://example\n",
}


@pytest.fixture(scope="module")
def signer() -> PemSigner:
    return PemSigner.generate()


@pytest.fixture(scope="module")
def keys(signer: PemSigner) -> KeyRing:
    return KeyRing([signer.public_key])


def test_packing_is_deterministic(tmp_path: Path) -> None:
    for path, data in FILES.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    first = pack_directory(tmp_path)
    for path in FILES:
        (tmp_path / path).touch()  # other mtimes, same content
    assert pack_directory(tmp_path) == first == pack_files(FILES)
    assert read_package(first) == FILES


def test_sign_then_verify_reports_who_and_what(signer: PemSigner, keys: KeyRing) -> None:
    signed = sign_package(
        pack_files(FILES),
        signer,
        builder="https://ci.example/builders/mwpkg@v1",
        source_uri="git+https://git.example/acme/etl",
        source_digest="a" * 40,
    )
    result = verify_package(signed, keys)
    assert result.manifest.name == "acme/nightly-etl"
    assert result.content_digest == content_digest(FILES)
    assert result.signer_key_ids == (signer.key_id,)
    assert result.predicate_types == (SLSA_PROVENANCE_V1,)
    assert result.builder == "https://ci.example/builders/mwpkg@v1"
    assert result.source_digest == "a" * 40
    assert sign_package(pack_files(FILES), signer) != signed  # another predicate, same content
    assert content_digest(read_package(sign_package(signed, signer))) == content_digest(FILES)


def test_independent_readers_verify_what_we_sign(signer: PemSigner) -> None:
    files = read_package(sign_package(pack_files(FILES), signer))
    public = load_pem_public_key(signer.public_key_pem())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    # cosign verify-blob: ECDSA-SHA256 over the digest document, DER signature in base64
    public.verify(
        base64.b64decode(files["signatures/package.sig"]),
        files["signatures/digest.txt"],
        ec.ECDSA(hashes.SHA256()),
    )
    envelope = SslibEnvelope.from_dict(json.loads(files["signatures/attestation.dsse.json"]))
    key = SSlibKey.from_crypto(public, keyid=signer.key_id, scheme="ecdsa-sha2-nistp256")
    assert set(envelope.verify([key], 1)) == {signer.key_id}
    statement = Statement.copy_from_pb(
        json_format.Parse(envelope.payload, statement_pb2.Statement())  # type: ignore[attr-defined]
    )
    statement.validate()
    assert statement.pb.subject[0].digest["sha256"] == content_digest(FILES)


def _rewrite(archive: bytes, change: dict[str, bytes | None]) -> bytes:
    files = read_package(archive)
    for path, data in change.items():
        if data is None:
            files.pop(path, None)
        else:
            files[path] = data
    return pack_files(files)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"README.md": b"# tampered\n"}, "digest.txt does not match"),
        ({"README.md": b"# tampered\n", "signatures/digest.txt": None}, "package.sig does not"),
        ({"examples/extra.yaml": b"x: 1\n", "signatures/digest.txt": None}, "does not verify"),
        ({"signatures/package.sig": b"MEUCIQ==\n"}, "package.sig does not verify"),
        ({"signatures/evil.sh": b"rm -rf /"}, "unknown files under signatures/"),
        (
            {
                "signatures/package.sig": None,
                "signatures/digest.txt": None,
                "signatures/attestation.dsse.json": None,
            },
            "not signed",
        ),
    ],
)
def test_tampered_or_unsigned_packages_are_refused(
    signer: PemSigner, keys: KeyRing, change: dict[str, bytes | None], message: str
) -> None:
    signed = sign_package(pack_files(FILES), signer)
    with pytest.raises(PackageSignatureError, match=message) as info:
        verify_package(_rewrite(signed, change), keys)
    assert info.value.grpc_code == grpc.StatusCode.FAILED_PRECONDITION


def test_another_signer_or_a_revoked_key_is_refused(signer: PemSigner) -> None:
    signed = sign_package(pack_files(FILES), signer)
    with pytest.raises(PackageSignatureError):
        verify_package(signed, KeyRing([PemSigner.generate().public_key]))
    with pytest.raises(PackageSignatureError):
        verify_package(signed, KeyRing())  # the key was removed (revoked) from the trust set
    # an attestation signed by the right key but for other content
    other = sign_package(_rewrite(pack_files(FILES), {"README.md": b"# other\n"}), signer)
    mixed = _rewrite(
        signed,
        {
            "signatures/attestation.dsse.json": read_package(other)[
                "signatures/attestation.dsse.json"
            ]
        },
    )
    with pytest.raises(PackageSignatureError, match="for other content"):
        verify_package(mixed, KeyRing([signer.public_key]))


def _raw_tar(entries: list[tarfile.TarInfo], data: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info in entries:
            tar.addfile(info, io.BytesIO(data.get(info.name, b"")) if info.isreg() else None)
    return gzip.compress(raw.getvalue())


def _entry(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    if kind == tarfile.SYMTYPE or kind == tarfile.LNKTYPE:
        info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (_entry("../evil.sh", size=1), "path traversal"),
        (_entry("a/../../evil.sh", size=1), "path traversal"),
        (_entry("/etc/cron.d/x", size=1), "absolute"),
        (_entry("link", tarfile.SYMTYPE), "only regular files"),
        (_entry("hard", tarfile.LNKTYPE), "only regular files"),
        (_entry("dev", tarfile.CHRTYPE), "only regular files"),
    ],
)
def test_path_tricks_are_refused(entry: tarfile.TarInfo, message: str) -> None:
    base = [_entry(p, size=len(d)) for p, d in FILES.items()]
    with pytest.raises(PackageFormatError, match=message):
        read_package(_raw_tar([*base, entry], {**FILES, entry.name: b"x"}))


def test_oversized_and_malformed_archives_are_refused() -> None:
    with pytest.raises(PackageFormatError, match="larger than"):
        read_package(pack_files({**FILES, "big.bin": b"\0" * (MAX_FILE_BYTES + 1)}))
    with pytest.raises(PackageFormatError, match="not a gzip"):
        read_package(b"PK\x03\x04 a zip file")
    with pytest.raises(PackageFormatError, match=r"README\.md is missing"):
        read_package(pack_files({"manifest.yaml": MANIFEST}))
    bomb = gzip.compress(b"\0" * (65 * 1024 * 1024))  # a tiny archive that unpacks to 65 MiB
    with pytest.raises(PackageFormatError, match="unpacks to more than"):
        read_package(bomb)


@pytest.mark.parametrize(
    ("replace", "field"),
    [
        ((b"version: 1.2.0", b"version: one"), "manifest.version"),
        ((b"tags: [etl, nightly]", b"tags: [etl]\nowner: me"), "manifest.owner"),
        ((b"permissions: [receipts:write, limits:check]", b"permissions: [root]"), "permissions"),
        ((b"apiVersion: mc.marketplace/v1", b"apiVersion: v0"), "manifest.apiVersion"),
    ],
)
def test_manifest_schema_violations_name_the_field(
    signer: PemSigner, keys: KeyRing, replace: tuple[bytes, bytes], field: str
) -> None:
    bad = {**FILES, "manifest.yaml": MANIFEST.replace(*replace)}
    with pytest.raises(InvalidArgument) as info:
        verify_package(pack_files(bad), keys)
    assert field in str(info.value)


def test_a_keyless_bundle_must_verify_against_the_pinned_root(
    signer: PemSigner, keys: KeyRing, sigstore_fixtures: Path
) -> None:
    bundle = (
        sigstore_fixtures / "bundle_v3.txt.sigstore"
    ).read_bytes()  # a real bundle, other artifact
    signed = _rewrite(
        sign_package(pack_files(FILES), signer), {"signatures/package.sigstore.json": bundle}
    )
    with pytest.raises(PackageSignatureError, match="no trusted root"):
        verify_package(signed, keys)
    with pytest.raises(PackageSignatureError, match="Sigstore bundle does not verify"):
        verify_package(
            signed,
            keys,
            trusted_root=sigstore_fixtures / "staging-trusted_root.json",
            identity="william@yossarian.net",
            issuer="https://github.com/login/oauth",
        )


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_are_a_typed_refusal(data: bytes) -> None:
    try:
        verify_package(data, KeyRing())
    except MCError as exc:
        assert exc.grpc_code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
        )
