"""Hypothesis properties: no mutation of a signed bundle verifies unless OPA's digest says the
content is the same, and nothing but a verified bundle ever activates."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from edge_support import BUILD_TIME, Built, Clock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mc_edge_policy.bundle import BundleFormatError, read_archive, write_archive
from mc_edge_policy.opa_hash import CanonicalJsonError, file_digest, is_structured
from mc_edge_policy.pdp import BundleRejected, PolicyDecisionPoint
from mc_edge_policy.signatures import KeyRing, SignatureError, verify_bundle_files

FIXTURES = [HealthCheck.function_scoped_fixture]


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURES)
@given(data=st.data())
def test_a_flipped_byte_never_verifies_unless_the_content_is_equivalent(
    seed_v1: Built, keyring: KeyRing, data: st.DataObject
) -> None:
    files = read_archive(seed_v1.archive)
    name = data.draw(st.sampled_from(sorted(n for n in files if n != ".signatures.json")))
    content = bytearray(files[name])
    index = data.draw(st.integers(0, len(content) - 1))
    content[index] ^= data.draw(st.integers(1, 255))
    mutated = {**files, name: bytes(content)}
    try:
        verify_bundle_files(mutated, keyring, now=BUILD_TIME)
    except SignatureError:
        return
    # Verified: only possible when OPA's digest of the new content is the signed one.
    assert is_structured(name)
    try:
        assert file_digest(name, bytes(content)) == file_digest(name, files[name])
    except CanonicalJsonError as exc:  # pragma: no cover - would have failed verification
        raise AssertionError("unparsable content verified") from exc


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURES)
@given(garbage=st.binary(max_size=2048), keep_prefix=st.integers(0, 64))
def test_arbitrary_bytes_never_activate(
    seed_v1: Built, keyring: KeyRing, tmp_path: Path, garbage: bytes, keep_prefix: int
) -> None:
    pdp = PolicyDecisionPoint(keyring, clock=Clock(BUILD_TIME + timedelta(hours=1)))
    archive = seed_v1.archive[:keep_prefix] + garbage
    try:
        pdp.activate(archive)
    except BundleRejected:
        assert pdp.active is None
        return
    assert archive == seed_v1.archive  # only the genuine bytes can activate


def test_dropping_any_file_never_verifies(seed_v1: Built, keyring: KeyRing) -> None:
    files = read_archive(seed_v1.archive)
    for name in files:
        reduced = {k: v for k, v in files.items() if k != name}
        try:
            verify_bundle_files(read_archive(write_archive(reduced)), keyring, now=BUILD_TIME)
        except (SignatureError, BundleFormatError):
            continue
        raise AssertionError(f"verified without {name}")
