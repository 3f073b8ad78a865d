"""Offline verification of the public Sigstore bundles in ../shared/fixtures/sigstore.

The ``sigstore_fixtures`` fixture (conftest) locates that directory relative to the repo root,
skips if it is absent, and sandboxes sigstore's XDG cache/data directories.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mc_common.signing import (
    IN_TOTO_PAYLOAD_TYPE,
    SigstoreBundleError,
    SigstoreSubjectMismatchError,
    SigstoreTrustedRootError,
    SigstoreVerificationError,
    load_trusted_root,
    verify_sigstore_bundle,
    verify_sigstore_dsse_bundle,
)

# (artifact, bundle, signer identity) for every message-signature bundle in the README.
MESSAGE_BUNDLES = [
    ("bundle.txt", "bundle.txt.sigstore", "a@tny.town"),
    ("bundle_v3.txt", "bundle_v3.txt.sigstore", "william@yossarian.net"),
    ("bundle_v3_alt.txt", "bundle_v3_alt.txt.sigstore", "william@yossarian.net"),
    ("staging-rekor-v2.txt", "staging-rekor-v2.txt.sigstore.json", "jku@goto.fi"),
]
DSSE_ARTIFACT = "a.dsse.staging-rekor-v2.txt"
DSSE_BUNDLE = "a.dsse.staging-rekor-v2.txt.sigstore.json"
GITHUB_OAUTH = "https://github.com/login/oauth"


@pytest.mark.parametrize(("artifact", "bundle", "identity"), MESSAGE_BUNDLES)
def test_bundle_verifies_against_staging(
    sigstore_fixtures: Path, artifact: str, bundle: str, identity: str
) -> None:
    result = verify_sigstore_bundle(
        (sigstore_fixtures / artifact).read_bytes(),
        (sigstore_fixtures / bundle).read_bytes(),
        sigstore_fixtures / "staging-trusted_root.json",
    )
    assert result.kind == "message_signature"
    assert result.identities == (identity,)
    assert result.issuer == GITHUB_OAUTH
    assert result.statement is None


@pytest.mark.parametrize(("artifact", "bundle", "identity"), MESSAGE_BUNDLES)
def test_bundle_verifies_with_pinned_identity(
    sigstore_fixtures: Path, artifact: str, bundle: str, identity: str
) -> None:
    result = verify_sigstore_bundle(
        (sigstore_fixtures / artifact).read_bytes(),
        (sigstore_fixtures / bundle).read_text(),
        str(sigstore_fixtures / "staging-trusted_root.json"),
        identity=identity,
        issuer=GITHUB_OAUTH,
    )
    assert result.identities == (identity,)


@pytest.mark.parametrize(("artifact", "bundle", "identity"), MESSAGE_BUNDLES)
def test_bundle_rejected_against_production(
    sigstore_fixtures: Path, artifact: str, bundle: str, identity: str
) -> None:
    with pytest.raises(SigstoreVerificationError) as excinfo:
        verify_sigstore_bundle(
            (sigstore_fixtures / artifact).read_bytes(),
            (sigstore_fixtures / bundle).read_bytes(),
            sigstore_fixtures / "production-trusted_root.json",
            identity=identity,
        )
    assert excinfo.value.code == "SIGSTORE_VERIFICATION_FAILED"


@pytest.mark.parametrize(("artifact", "bundle", "identity"), MESSAGE_BUNDLES)
def test_one_byte_appended_artifact_rejected(
    sigstore_fixtures: Path, artifact: str, bundle: str, identity: str
) -> None:
    with pytest.raises(SigstoreVerificationError):
        verify_sigstore_bundle(
            (sigstore_fixtures / artifact).read_bytes() + b"\n",
            (sigstore_fixtures / bundle).read_bytes(),
            sigstore_fixtures / "staging-trusted_root.json",
        )


def test_wrong_identity_or_issuer_rejected(sigstore_fixtures: Path) -> None:
    args = (
        (sigstore_fixtures / "bundle.txt").read_bytes(),
        (sigstore_fixtures / "bundle.txt.sigstore").read_bytes(),
        sigstore_fixtures / "staging-trusted_root.json",
    )
    with pytest.raises(SigstoreVerificationError, match="SANs do not match"):
        verify_sigstore_bundle(*args, identity="someone@else.example")
    with pytest.raises(SigstoreVerificationError, match="does not match"):
        verify_sigstore_bundle(*args, identity="a@tny.town", issuer="https://accounts.google.com")
    with pytest.raises(SigstoreVerificationError):
        verify_sigstore_bundle(*args, issuer="https://accounts.google.com")


def test_dsse_bundle_verifies_and_exposes_statement(sigstore_fixtures: Path) -> None:
    root = load_trusted_root(sigstore_fixtures / "staging-trusted_root.json")
    result = verify_sigstore_dsse_bundle((sigstore_fixtures / DSSE_BUNDLE).read_bytes(), root)
    assert result.kind == "dsse"
    assert result.payload_type == IN_TOTO_PAYLOAD_TYPE
    assert result.statement is not None
    assert result.statement["_type"] == "https://in-toto.io/Statement/v1"
    assert result.statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert result.statement["subject"][0]["name"] == "a.txt"
    assert result.issuer == "https://token.actions.githubusercontent.com"
    assert result.identities[0].startswith("https://github.com/sigstore-conformance/")


def test_dsse_bundle_rejected_against_production(sigstore_fixtures: Path) -> None:
    with pytest.raises(SigstoreVerificationError):
        verify_sigstore_dsse_bundle(
            (sigstore_fixtures / DSSE_BUNDLE).read_bytes(),
            sigstore_fixtures / "production-trusted_root.json",
        )


def test_dsse_bundle_requires_artifact_to_be_a_subject(sigstore_fixtures: Path) -> None:
    # The shared artifact file is not the statement's subject (its sha256 differs from the
    # subject digest), so binding it to the bundle must fail, as `sigstore verify` does;
    # the same holds for the artifact with one byte appended.
    artifact = (sigstore_fixtures / DSSE_ARTIFACT).read_bytes()
    for candidate in (artifact, artifact + b"x"):
        with pytest.raises(SigstoreSubjectMismatchError) as excinfo:
            verify_sigstore_bundle(
                candidate,
                (sigstore_fixtures / DSSE_BUNDLE).read_bytes(),
                sigstore_fixtures / "staging-trusted_root.json",
            )
        assert excinfo.value.code == "SIGSTORE_SUBJECT_MISMATCH"


def test_message_bundle_is_not_a_dsse_bundle(sigstore_fixtures: Path) -> None:
    with pytest.raises(SigstoreBundleError, match="no DSSE envelope"):
        verify_sigstore_dsse_bundle(
            (sigstore_fixtures / "bundle.txt.sigstore").read_bytes(),
            sigstore_fixtures / "staging-trusted_root.json",
        )


@pytest.mark.parametrize("document", [b"not json", b"[]", b'{"mediaType": "nope"}'])
def test_malformed_bundle(sigstore_fixtures: Path, document: bytes) -> None:
    with pytest.raises(SigstoreBundleError) as excinfo:
        verify_sigstore_bundle(b"x", document, sigstore_fixtures / "staging-trusted_root.json")
    assert excinfo.value.code == "SIGSTORE_BUNDLE_MALFORMED"


def test_missing_or_bad_trusted_root(sigstore_fixtures: Path, tmp_path: Path) -> None:
    bundle = (sigstore_fixtures / "bundle.txt.sigstore").read_bytes()
    with pytest.raises(SigstoreTrustedRootError):
        verify_sigstore_bundle(b"x", bundle, tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SigstoreTrustedRootError) as excinfo:
        verify_sigstore_bundle(b"x", bundle, tmp_path / "bad.json")
    assert excinfo.value.code == "SIGSTORE_TRUSTED_ROOT_INVALID"
