"""Offline verification of keyless Sigstore bundles (sigstore-python 4.x) against a trusted root.

Nothing here touches the network: the caller supplies the trusted root file (for example the
staging or production ``trusted_root.json``). sigstore-python may still create user cache/data
directories (``XDG_CACHE_HOME``/``XDG_DATA_HOME``), so sandboxed callers should point those at
a writable location. Every sigstore failure is re-raised as one of our typed errors.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mc_common.signing.errors import (
    SigstoreBundleError,
    SigstoreSubjectMismatchError,
    SigstoreTrustedRootError,
    SigstoreVerificationError,
)

if TYPE_CHECKING:
    from cryptography.x509 import Certificate
    from sigstore.models import Bundle, TrustedRoot
    from sigstore.verify import Verifier
    from sigstore.verify.policy import VerificationPolicy

_IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
# Fulcio certificate extensions (https://github.com/sigstore/fulcio/blob/main/docs/oid-info.md).
_OIDC_ISSUER_V2_OID = "1.3.6.1.4.1.57264.1.8"
_OIDC_ISSUER_V1_OID = "1.3.6.1.4.1.57264.1.1"
_OTHERNAME_OID = "1.3.6.1.4.1.57264.1.7"


@dataclass(frozen=True, slots=True)
class SigstoreVerification:
    """What a verified bundle established.

    ``identities`` are the signing certificate's SANs (emails, URIs, Sigstore other-names) and
    ``issuer`` its OIDC issuer; when no ``identity`` was required these are *unchecked* claims
    that the caller must inspect. For DSSE bundles ``payload``/``payload_type`` hold the signed
    payload and ``statement`` the parsed in-toto Statement (None for other payload types).
    """

    kind: Literal["message_signature", "dsse"]
    identities: tuple[str, ...]
    issuer: str | None
    artifact_sha256: str | None
    payload_type: str | None = None
    payload: bytes | None = None
    statement: dict[str, Any] | None = None


def load_trusted_root(path: str | os.PathLike[str]) -> TrustedRoot:
    """Load a Sigstore ``trusted_root.json``; raise ``SigstoreTrustedRootError`` on failure."""
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import TrustedRoot

    try:
        return TrustedRoot.from_file(os.fspath(path))
    except (OSError, ValueError, SigstoreError) as exc:
        raise SigstoreTrustedRootError(f"cannot load trusted root {path}: {exc}") from exc


def verify_sigstore_bundle(
    artifact: bytes,
    bundle_json: bytes | str,
    trusted_root: str | os.PathLike[str] | TrustedRoot,
    identity: str | None = None,
    issuer: str | None = None,
) -> SigstoreVerification:
    """Verify that ``bundle_json`` is a valid keyless Sigstore signature over ``artifact``.

    Message-signature bundles are checked against the artifact bytes; DSSE bundles are
    verified and the artifact's SHA-256 must be one of the in-toto statement's subjects
    (as ``sigstore verify`` does). ``identity`` (a SAN) and ``issuer`` (OIDC issuer URL)
    pin who signed; with neither, only integrity and the trust chain are checked (sigstore
    logs a warning) and the result's ``identities`` must be inspected by the caller.
    """
    from sigstore.errors import Error as SigstoreError

    bundle, is_dsse = _parse_bundle(bundle_json)
    verifier = _verifier(trusted_root)
    policy = _policy(identity, issuer)
    digest = hashlib.sha256(artifact).hexdigest()
    if is_dsse:
        result = _verify_dsse(verifier, bundle, policy)
        if result.statement is None or digest not in _subject_sha256s(result.statement):
            raise SigstoreSubjectMismatchError(
                f"artifact sha256 {digest} is not a subject of the bundle's in-toto statement"
            )
        return SigstoreVerification(
            kind="dsse",
            identities=result.identities,
            issuer=result.issuer,
            artifact_sha256=digest,
            payload_type=result.payload_type,
            payload=result.payload,
            statement=result.statement,
        )
    try:
        verifier.verify_artifact(artifact, bundle, policy)
    except (SigstoreError, ValueError) as exc:
        raise SigstoreVerificationError(f"sigstore bundle rejected: {exc}") from exc
    identities, cert_issuer = _certificate_identity(bundle.signing_certificate)
    return SigstoreVerification(
        kind="message_signature",
        identities=identities,
        issuer=cert_issuer,
        artifact_sha256=digest,
    )


def verify_sigstore_dsse_bundle(
    bundle_json: bytes | str,
    trusted_root: str | os.PathLike[str] | TrustedRoot,
    identity: str | None = None,
    issuer: str | None = None,
) -> SigstoreVerification:
    """Verify a DSSE Sigstore bundle on its own and return its payload and in-toto statement.

    Unlike ``verify_sigstore_bundle`` this binds no artifact: the caller must match the
    statement's subjects against whatever it is attesting to.
    """
    bundle, is_dsse = _parse_bundle(bundle_json)
    if not is_dsse:
        raise SigstoreBundleError("bundle has no DSSE envelope (it is a message signature)")
    return _verify_dsse(_verifier(trusted_root), bundle, _policy(identity, issuer))


def _verify_dsse(
    verifier: Verifier, bundle: Bundle, policy: VerificationPolicy
) -> SigstoreVerification:
    from sigstore.errors import Error as SigstoreError

    try:
        payload_type, payload = verifier.verify_dsse(bundle, policy)
    except (SigstoreError, ValueError) as exc:
        raise SigstoreVerificationError(f"sigstore DSSE bundle rejected: {exc}") from exc
    statement: dict[str, Any] | None = None
    if payload_type == _IN_TOTO_PAYLOAD_TYPE:
        try:
            parsed = json.loads(payload)
        except ValueError as exc:
            raise SigstoreVerificationError(f"in-toto payload is not JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise SigstoreVerificationError("in-toto payload is not a JSON object")
        statement = parsed
    identities, cert_issuer = _certificate_identity(bundle.signing_certificate)
    return SigstoreVerification(
        kind="dsse",
        identities=identities,
        issuer=cert_issuer,
        artifact_sha256=None,
        payload_type=payload_type,
        payload=payload,
        statement=statement,
    )


def _parse_bundle(bundle_json: bytes | str) -> tuple[Bundle, bool]:
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import Bundle

    try:
        raw = json.loads(bundle_json)
    except ValueError as exc:
        raise SigstoreBundleError(f"bundle is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise SigstoreBundleError("bundle is not a JSON object")
    try:
        bundle = Bundle.from_json(bundle_json)
    except (SigstoreError, ValueError, KeyError, TypeError) as exc:
        raise SigstoreBundleError(f"invalid sigstore bundle: {exc}") from exc
    return bundle, "dsseEnvelope" in raw


def _verifier(trusted_root: str | os.PathLike[str] | TrustedRoot) -> Verifier:
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import TrustedRoot
    from sigstore.verify import Verifier

    root = (
        trusted_root if isinstance(trusted_root, TrustedRoot) else load_trusted_root(trusted_root)
    )
    try:
        return Verifier(trusted_root=root)
    except (SigstoreError, ValueError) as exc:
        raise SigstoreTrustedRootError(f"unusable trusted root: {exc}") from exc


def _policy(identity: str | None, issuer: str | None) -> VerificationPolicy:
    from sigstore.verify.policy import Identity, OIDCIssuer, UnsafeNoOp

    if identity:
        return Identity(identity=identity, issuer=issuer)
    if issuer:
        return OIDCIssuer(issuer)
    return UnsafeNoOp()


def _subject_sha256s(statement: dict[str, Any]) -> set[str]:
    subjects = statement.get("subject")
    found: set[str] = set()
    if isinstance(subjects, list):
        for subject in subjects:
            digest = subject.get("digest") if isinstance(subject, dict) else None
            value = digest.get("sha256") if isinstance(digest, dict) else None
            if isinstance(value, str):
                found.add(value.lower())
    return found


def _certificate_identity(cert: Certificate) -> tuple[tuple[str, ...], str | None]:
    from cryptography import x509
    from cryptography.hazmat import asn1

    identities: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        identities.extend(san.get_values_for_type(x509.RFC822Name))
        identities.extend(san.get_values_for_type(x509.UniformResourceIdentifier))
        identities.extend(
            name.value.decode("utf-8", "replace")
            for name in san.get_values_for_type(x509.OtherName)
            if name.type_id.dotted_string == _OTHERNAME_OID
        )
    issuer: str | None = None
    for ext in cert.extensions:
        if not isinstance(ext.value, x509.UnrecognizedExtension):
            continue
        oid = ext.oid.dotted_string
        if oid == _OIDC_ISSUER_V2_OID:
            try:
                issuer = asn1.decode_der(str, ext.value.value)
            except ValueError:
                continue
            break
        if oid == _OIDC_ISSUER_V1_OID and issuer is None:
            issuer = ext.value.value.decode("utf-8", "replace")
    return tuple(identities), issuer
