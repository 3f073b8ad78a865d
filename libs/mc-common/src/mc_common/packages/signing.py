"""Signing and verifying workflow packages.

A signed package carries, under `signatures/` (outside what is signed):

- `digest.txt`: the digest document (see `archive`), so `cosign verify-blob --key KEY
  --signature signatures/package.sig signatures/digest.txt` checks a package with cosign alone;
- `package.sig`: a cosign-compatible key signature (base64 DER ECDSA P-256) over it;
- `attestation.dsse.json`: a DSSE envelope over an in-toto Statement v1 whose subject is
  `NAME@VERSION` with the content digest, and whose predicate is SLSA provenance v1 when the
  builder is known, else MC's package predicate;
- `package.sigstore.json` (optional): a keyless Sigstore bundle over the digest document.

Verification fails closed: every signature present must verify against the trusted keys (or
the pinned Sigstore trusted root and identity) and cover this content digest; a package with
none that can be checked is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import FailedPrecondition, PreconditionViolation
from mc_common.packages.archive import (
    SIGNATURES_DIR,
    content_digest,
    digest_document,
    pack_files,
    read_package,
)
from mc_common.packages.manifest import Manifest, parse_manifest
from mc_common.signing import KeyRing, Signer
from mc_common.signing.cosign import cosign_sign_blob
from mc_common.signing.dsse import Envelope, sign_envelope, verify_envelope_detailed
from mc_common.signing.errors import SignatureError

IN_TOTO_PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1: Final = "https://slsa.dev/provenance/v1"
PACKAGE_PREDICATE_TYPE: Final = "https://maestro-conductor.dev/package/v1"
BUILD_TYPE: Final = "https://maestro-conductor.dev/mwpkg/build/v1"

DIGEST_FILE: Final = SIGNATURES_DIR + "digest.txt"
SIG_FILE: Final = SIGNATURES_DIR + "package.sig"
ATTESTATION_FILE: Final = SIGNATURES_DIR + "attestation.dsse.json"
SIGSTORE_FILE: Final = SIGNATURES_DIR + "package.sigstore.json"
_KNOWN: Final = frozenset({DIGEST_FILE, SIG_FILE, ATTESTATION_FILE, SIGSTORE_FILE})


class PackageSignatureError(FailedPrecondition):
    """A package whose signatures do not verify, or that has none MC can check."""

    def __init__(self, message: str, *, unsigned: bool = False) -> None:
        super().__init__(
            message,
            [PreconditionViolation("SIGNATURE", "package", message)],
            reason=(
                ErrorReason.ERROR_REASON_PACKAGE_UNSIGNED
                if unsigned
                else ErrorReason.ERROR_REASON_PACKAGE_SIGNATURE_INVALID
            ),
        )


@dataclass(frozen=True)
class PackageVerification:
    """What verification established about a package (what `maestro pkg inspect` shows)."""

    manifest: Manifest
    content_digest: str
    files: tuple[str, ...]
    signer_key_ids: tuple[str, ...]
    keyless_identities: tuple[str, ...]
    keyless_issuer: str | None
    predicate_types: tuple[str, ...]
    builder: str | None
    source: str | None
    source_digest: str | None


def _subject_name(manifest: Manifest) -> str:
    return f"{manifest.name}@{manifest.version}"


def statement(
    manifest: Manifest,
    digest: str,
    *,
    builder: str | None = None,
    source_uri: str | None = None,
    source_digest: str | None = None,
) -> dict[str, Any]:
    """The in-toto Statement v1 a package attestation carries."""
    subject = [{"name": _subject_name(manifest), "digest": {"sha256": digest}}]
    if builder:
        source: dict[str, Any] = {}
        if source_uri:
            source["uri"] = source_uri
        if source_digest:
            source["digest"] = {"sha1" if len(source_digest) == 40 else "sha256": source_digest}
        predicate: dict[str, Any] = {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"package": _subject_name(manifest), "source": source},
                "resolvedDependencies": [source] if source else [],
            },
            "runDetails": {"builder": {"id": builder}},
        }
        return {
            "_type": STATEMENT_TYPE,
            "subject": subject,
            "predicateType": SLSA_PROVENANCE_V1,
            "predicate": predicate,
        }
    return {
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PACKAGE_PREDICATE_TYPE,
        "predicate": {"name": manifest.name, "version": manifest.version},
    }


def sign_package(
    archive: bytes,
    signer: Signer,
    *,
    builder: str | None = None,
    source_uri: str | None = None,
    source_digest: str | None = None,
) -> bytes:
    """`archive` with a key signature and an attestation under `signatures/` (replacing any
    earlier ones). The content, and so the content digest, is unchanged."""
    files = {p: d for p, d in read_package(archive).items() if not p.startswith(SIGNATURES_DIR)}
    manifest = parse_manifest(files["manifest.yaml"])
    document = digest_document(files)
    digest = content_digest(files)
    payload = json.dumps(
        statement(
            manifest, digest, builder=builder, source_uri=source_uri, source_digest=source_digest
        ),
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    envelope = sign_envelope(payload, IN_TOTO_PAYLOAD_TYPE, signer)
    files[DIGEST_FILE] = document
    files[SIG_FILE] = (cosign_sign_blob(signer, document) + "\n").encode()
    files[ATTESTATION_FILE] = envelope.to_json().encode()
    return pack_files(files)


def verify_package(
    archive: bytes,
    keys: KeyRing,
    *,
    trusted_root: str | os.PathLike[str] | None = None,
    identity: str | None = None,
    issuer: str | None = None,
) -> PackageVerification:
    """Verify `archive` (format, manifest, every signature present) against `keys` and, for a
    keyless bundle, the pinned `trusted_root` and signer `identity`/`issuer`.

    Raises `PackageFormatError` / `InvalidArgument` (malformed) or `PackageSignatureError`.
    """
    files = read_package(archive)
    manifest = parse_manifest(files["manifest.yaml"])
    for entry in manifest.entrypoints:
        if entry.file not in files:
            raise PackageSignatureError(f"entrypoint {entry.name}: {entry.file} is not in it")
    unknown = sorted(p for p in files if p.startswith(SIGNATURES_DIR) and p not in _KNOWN)
    if unknown:
        raise PackageSignatureError(f"unknown files under signatures/: {', '.join(unknown)}")
    document = digest_document(files)
    digest = content_digest(files)
    if DIGEST_FILE in files and files[DIGEST_FILE] != document:
        raise PackageSignatureError("signatures/digest.txt does not match the package content")
    signer_ids: list[str] = []
    predicate_types: list[str] = []
    builder = source = source_digest = None
    if SIG_FILE in files:
        signer_ids.append(_verify_key_signature(files[SIG_FILE], document, keys))
    if ATTESTATION_FILE in files:
        found, statement_doc = _verify_attestation(files[ATTESTATION_FILE], keys, manifest, digest)
        signer_ids.extend(k for k in found if k not in signer_ids)
        predicate_types.append(str(statement_doc.get("predicateType", "")))
        builder, source, source_digest = _provenance(statement_doc)
    identities: tuple[str, ...] = ()
    keyless_issuer = None
    if SIGSTORE_FILE in files:
        identities, keyless_issuer = _verify_keyless(
            files[SIGSTORE_FILE], document, trusted_root, identity, issuer
        )
    if not signer_ids and not identities:
        raise PackageSignatureError(
            "the package is not signed (no signatures/package.sig, attestation or Sigstore bundle)",
            unsigned=True,
        )
    return PackageVerification(
        manifest=manifest,
        content_digest=digest,
        files=tuple(sorted(p for p in files if not p.startswith(SIGNATURES_DIR))),
        signer_key_ids=tuple(signer_ids),
        keyless_identities=identities,
        keyless_issuer=keyless_issuer,
        predicate_types=tuple(predicate_types),
        builder=builder,
        source=source,
        source_digest=source_digest,
    )


def _verify_key_signature(signature: bytes, document: bytes, keys: KeyRing) -> str:
    from mc_common.signing.cosign import cosign_verify_blob

    for key_id, key in keys.items():
        try:
            cosign_verify_blob(key, document, signature)
        except SignatureError:
            continue
        return key_id
    raise PackageSignatureError(
        "signatures/package.sig does not verify with any trusted key (wrong signer, revoked "
        "key, or content changed after signing)"
    )


def _verify_attestation(
    raw: bytes, keys: KeyRing, manifest: Manifest, digest: str
) -> tuple[Sequence[str], dict[str, Any]]:
    try:
        envelope = Envelope.from_json(raw)
        verified = verify_envelope_detailed(envelope, keys, payload_type=IN_TOTO_PAYLOAD_TYPE)
        document = json.loads(verified.payload)
    except (SignatureError, ValueError) as exc:
        raise PackageSignatureError(f"the attestation does not verify: {exc}") from None
    if not isinstance(document, dict) or document.get("_type") != STATEMENT_TYPE:
        raise PackageSignatureError("the attestation is not an in-toto Statement v1")
    subjects = document.get("subject")
    wanted = {"name": _subject_name(manifest), "digest": {"sha256": digest}}
    if not isinstance(subjects, list) or not any(
        isinstance(s, dict)
        and s.get("name") == wanted["name"]
        and isinstance(s.get("digest"), dict)
        and s["digest"].get("sha256") == digest
        for s in subjects
    ):
        raise PackageSignatureError(
            f"the attestation is for other content (its subject is not {wanted['name']} "
            f"sha256:{digest})"
        )
    return verified.key_ids, document


def _provenance(document: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    if document.get("predicateType") != SLSA_PROVENANCE_V1:
        return None, None, None
    predicate = document.get("predicate") or {}
    builder = (predicate.get("runDetails") or {}).get("builder", {}).get("id")
    source = ((predicate.get("buildDefinition") or {}).get("externalParameters") or {}).get(
        "source"
    ) or {}
    digest_map = source.get("digest") or {}
    source_digest = next(iter(digest_map.values()), None) if isinstance(digest_map, dict) else None
    return builder, source.get("uri"), source_digest


def _verify_keyless(
    bundle: bytes,
    document: bytes,
    trusted_root: str | os.PathLike[str] | None,
    identity: str | None,
    issuer: str | None,
) -> tuple[tuple[str, ...], str | None]:
    if trusted_root is None or (identity is None and issuer is None):
        raise PackageSignatureError(
            "the package has a keyless Sigstore bundle, but no trusted root and signer "
            "identity are pinned to check it against"
        )
    from mc_common.signing import verify_sigstore_bundle

    try:
        result = verify_sigstore_bundle(document, bundle, trusted_root, identity, issuer)
    except SignatureError as exc:
        raise PackageSignatureError(f"the Sigstore bundle does not verify: {exc}") from None
    return tuple(result.identities), result.issuer
