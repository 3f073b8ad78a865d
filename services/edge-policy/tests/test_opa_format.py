"""Our bundle hashing, signing and verification agree with OPA's, on OPA's own vectors."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import warnings
from datetime import UTC, datetime, timedelta

import opa_vectors as vectors
import pytest
from hypothesis import given
from hypothesis import strategies as st
from joserfc.errors import SecurityWarning
from joserfc.jwk import OctKey

from mc_edge_policy.bundle import (
    BundleFormatError,
    read_archive,
    write_archive,
)
from mc_edge_policy.opa_hash import canonical_json, file_digest, go_json_string, parse_json
from mc_edge_policy.signatures import (
    KeyRing,
    SignatureError,
    SigningKey,
    VerificationKey,
    sign_files,
    verify_bundle_files,
    verify_token,
)

NOW = datetime(2026, 11, 26, tzinfo=UTC)
# OPA's vectors use a 6-byte HMAC secret, which joserfc rightly warns about.
weak_hmac = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")


def hmac_ring(key_id: str = "foo", secret: bytes = vectors.HS256_SECRET) -> KeyRing:
    with warnings.catch_warnings():  # OPA's vectors use a short HMAC secret on purpose
        warnings.simplefilter("ignore", SecurityWarning)
        key = OctKey.import_key(secret)
    return KeyRing([VerificationKey(key_id, "HS256", key)])


@pytest.mark.parametrize(("path", "content", "algorithm", "digest"), vectors.FILE_HASHES)
def test_file_digests_match_opa(path: str, content: str, algorithm: str, digest: str) -> None:
    assert file_digest(path.lstrip("/"), content.encode(), algorithm) == digest


def test_manifest_digest_matches_opa_signed_payload() -> None:
    # The `.manifest` entry of OPA's TestReadWithSignatures token (SHA-256).
    digest = file_digest(".manifest", b'{"revision": "quickbrownfaux"}', "SHA-256")
    assert digest == "507a2c38a1441db58d2cb87982c42aa91a4342ef422a6b542eddebeef6f0412f"


def test_numbers_are_hashed_as_written() -> None:
    literal = b'{"c": 123.45678911111111111111111111111111111111111111111111111, "a": 1e3}'
    assert canonical_json(parse_json(literal)) == (
        b'{"a":1e3,"c":123.45678911111111111111111111111111111111111111111111111}'
    )


def test_strings_are_encoded_as_go_does_without_html_escaping() -> None:
    assert go_json_string("<foo></foo>&") == '"<foo></foo>&"'
    assert go_json_string("$\u03b1\u00a9\u2122") == '"$\u03b1\u00a9\u2122"'
    assert go_json_string("a\u2028b\x01\n") == '"a\\u2028b\\u0001\\n"'


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
        max_leaves=20,
    )
)
def test_canonical_json_is_json_that_round_trips(value: object) -> None:
    encoded = canonical_json(value)
    assert json.loads(encoded) == value
    assert canonical_json(parse_json(encoded)) == encoded


@weak_hmac
def test_valid_hs256_token_verifies_with_scope() -> None:
    verified = verify_token(vectors.SIGNED_TOKEN_HS256, hmac_ring(), now=NOW, scope="write")
    assert verified.key_id == "foo"
    assert len(verified.files) == 2


@weak_hmac
@pytest.mark.parametrize(
    ("token", "ring", "key_id", "scope", "message"),
    [
        (vectors.SIGNED_TOKEN_HS256, hmac_ring(), "", "bad_scope", "scope mismatch"),
        (vectors.SIGNED_NO_KEY_ID_TOKEN_HS256, KeyRing(), "", "", "verification key ID is empty"),
        (
            vectors.SIGNED_TOKEN_HS256,
            KeyRing(),
            "",
            "",
            "verification key corresponding to ID foo not found",
        ),
        (
            vectors.SIGNED_TOKEN_HS256,
            hmac_ring(secret=b"bad_secret"),
            "",
            "",
            "failed to verify JWT signature",
        ),
        (vectors.BAD_TOKEN, hmac_ring(), "", "", "invalid number of segments"),
        (vectors.BAD_TOKEN_PAYLOAD, hmac_ring(), "", "", "files must be a list"),
    ],
)
def test_opa_rejections(token: str, ring: KeyRing, key_id: str, scope: str, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify_token(token, ring, now=NOW, key_id=key_id, scope=scope)


@weak_hmac
def test_deprecated_keyid_claim_and_configured_key_id_take_effect() -> None:
    verify_token(vectors.SIGNED_DEPRECATED_KEYID_CLAIM_HS256, hmac_ring(), now=NOW, scope="write")
    # The configured key id wins over the token's `kid: bar`.
    verify_token(
        vectors.SIGNED_BAR_KID_TOKEN_HS256, hmac_ring(), now=NOW, key_id="foo", scope="write"
    )


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")  # OPA's 1024-bit key
def test_rs256_vectors() -> None:
    good = KeyRing([VerificationKey.from_pem("foo", vectors.PUBLIC_KEY_VALID, "RS256")])
    verify_token(vectors.SIGNED_TOKEN_RS256, good, now=NOW, scope="write")
    bad = KeyRing([VerificationKey.from_pem("foo", vectors.PUBLIC_KEY_INVALID, "RS256")])
    with pytest.raises(SignatureError, match="failed to verify JWT signature"):
        verify_token(vectors.SIGNED_TOKEN_RS256, bad, now=NOW, scope="write")


@weak_hmac
def test_configured_algorithm_wins_over_the_header() -> None:
    # An HS256 token must not verify against an RS256-configured key (algorithm confusion).
    ring = KeyRing([VerificationKey.from_pem("foo", vectors.PUBLIC_KEY_VALID, "RS256")])
    with pytest.raises(SignatureError):
        verify_token(vectors.SIGNED_TOKEN_HS256, ring, now=NOW, scope="write")


def _signatures(token: str) -> bytes:
    return json.dumps({"signatures": [token]}).encode()


@weak_hmac
def test_bundle_digest_mismatch_as_opa_reports_it() -> None:
    files = {
        ".signatures.json": _signatures(vectors.READ_TOKEN_HS256),
        "a/b/c/data.json": b"[1,2,3]",
        ".manifest": b'{"revision": "quickbrownfaux"}',
    }
    with pytest.raises(SignatureError) as raised:
        verify_bundle_files(files, hmac_ring(), now=NOW, scope="write")
    assert str(raised.value) == vectors.READ_DIGEST_MISMATCH


@weak_hmac
def test_files_listed_but_missing_are_rejected() -> None:
    files = {
        ".signatures.json": _signatures(vectors.EXTRA_FILES_TOKEN_HS256),
        ".manifest": b'{"revision": "quickbrownfaux"}',
    }
    with pytest.raises(SignatureError) as raised:
        verify_bundle_files(files, hmac_ring(), now=NOW, scope="write")
    assert str(raised.value) == (
        "file(s) [a/b/c/data.json http/policy/policy.rego] specified in bundle signatures "
        "but not found in the target bundle"
    )


@weak_hmac
@pytest.mark.parametrize(
    ("signatures", "message"),
    [
        (None, "bundle missing .signatures.json file"),
        (b'{"signatures": []}', "missing JWT"),
        (
            _signatures(vectors.SIGNED_TOKEN_HS256)[:-2]
            + b', "'
            + vectors.SIGNED_TOKEN_HS256.encode()
            + b'"]}',
            "multiple JWTs not supported",
        ),
    ],
)
def test_signature_file_shape(signatures: bytes | None, message: str) -> None:
    files = {".manifest": b"{}"}
    if signatures is not None:
        files[".signatures.json"] = signatures
    with pytest.raises(SignatureError, match=message):
        verify_bundle_files(files, hmac_ring(), now=NOW, scope="write")


def _signed(key: SigningKey) -> dict[str, bytes]:
    files = {
        ".manifest": b'{"revision":"r1","roots":["mc"],"rego_version":1,"metadata":{}}',
        "data.json": b'{"mc": {"limits": {"x": 1.50}}}',
        "mc/p/policy.rego": b"package mc.p\n\nallow := true\n",
    }
    files[".signatures.json"] = sign_files(files, key, issued_at=NOW)
    return files


def test_our_signature_round_trips_through_the_archive() -> None:
    key = SigningKey.generate("mc-2026-q4")
    archive = write_archive(_signed(key))
    assert write_archive(read_archive(archive)) == archive  # deterministic
    verified = verify_bundle_files(read_archive(archive), KeyRing([key.verification_key()]))
    assert set(verified.files) == {".manifest", "data.json", "mc/p/policy.rego"}
    assert {f.algorithm for f in verified.files.values()} == {"SHA-256"}
    assert verified.key_id == "mc-2026-q4"


@pytest.mark.parametrize("name", [".manifest", "data.json", "mc/p/policy.rego"])
def test_any_tampered_file_is_rejected(name: str) -> None:
    key = SigningKey.generate("k")
    files = _signed(key)
    files[name] = files[name].replace(b"1", b"2").replace(b"true", b"false")
    with pytest.raises(SignatureError, match="digest mismatch"):
        verify_bundle_files(files, KeyRing([key.verification_key()]))


def test_added_file_is_rejected() -> None:
    key = SigningKey.generate("k")
    files = {**_signed(key), "mc/p/extra.rego": b"package mc.p\n\nallow := true\n"}
    with pytest.raises(SignatureError, match="not included in bundle signature"):
        verify_bundle_files(files, KeyRing([key.verification_key()]))


def test_rotation_overlap_accepts_both_keys_then_only_the_new() -> None:
    old, new = SigningKey.generate("k-old"), SigningKey.generate("k-new")
    overlap_end = NOW + timedelta(days=7)
    ring = KeyRing(
        [old.verification_key(not_after=overlap_end), new.verification_key(not_before=NOW)]
    )
    verify_bundle_files(_signed(old), ring, now=NOW + timedelta(days=1))
    verify_bundle_files(_signed(new), ring, now=NOW + timedelta(days=1))
    with pytest.raises(SignatureError, match="validity window"):
        verify_bundle_files(_signed(old), ring, now=overlap_end)
    verify_bundle_files(_signed(new), ring, now=overlap_end)


def test_wrong_key_is_rejected() -> None:
    signer, other = SigningKey.generate("k"), SigningKey.generate("k")
    with pytest.raises(SignatureError, match="failed to verify JWT signature"):
        verify_bundle_files(_signed(signer), KeyRing([other.verification_key()]))


def _raw_tar_gz(name: str, content: bytes = b"x", kind: bytes = tarfile.REGTYPE) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = len(content) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(content) if kind == tarfile.REGTYPE else None)
    return gzip.compress(raw.getvalue())


@pytest.mark.parametrize(
    "archive",
    [
        b"",
        b"not gzip",
        b"\x1f\x8b\x08\x00garbage",
        _raw_tar_gz("../escape.rego"),
        _raw_tar_gz("/a/../../escape.rego"),
        _raw_tar_gz("link.rego", kind=tarfile.SYMTYPE),
        gzip.compress(b"\0" * (33 * 1024 * 1024)),
    ],
)
def test_garbage_archives_are_format_errors(archive: bytes) -> None:
    with pytest.raises(BundleFormatError):
        read_archive(archive)


@given(st.binary(max_size=512))
def test_any_bytes_either_parse_or_raise_format_error(data: bytes) -> None:
    try:
        read_archive(data)
    except BundleFormatError:
        pass
