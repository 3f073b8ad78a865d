"""Tests for ECDSA P-256 keys, key ids, key rings and cosign-compatible blob signatures."""

from __future__ import annotations

import base64
import hashlib
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from mc_common.signing import (
    InvalidSignatureError,
    KeyConflictError,
    KeyFormatError,
    KeyRing,
    PemSigner,
    PublicKey,
    Signer,
    UnknownKeyError,
    compute_key_id,
    cosign_sign_blob,
    cosign_verify_blob,
)

requires_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl CLI not installed"
)


def test_key_id_is_sha256_of_der_spki() -> None:
    signer = PemSigner.generate()
    der = signer.public_key.der()
    assert der == serialization.load_pem_public_key(signer.public_key_pem()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert signer.key_id == hashlib.sha256(der).hexdigest() == compute_key_id(der)
    assert len(signer.key_id) == 64


def test_key_id_is_stable_across_pem_round_trips() -> None:
    signer = PemSigner.generate()
    reloaded = PemSigner.from_pem(signer.private_key_pem())
    assert reloaded.key_id == signer.key_id
    assert PublicKey.from_pem(signer.public_key_pem()).key_id == signer.key_id
    assert PublicKey.from_der(signer.public_key.der()) == signer.public_key


def test_pem_formats() -> None:
    signer = PemSigner.generate()
    assert signer.public_key_pem().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert signer.private_key_pem().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert signer.private_key_pem("pw").startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")


def test_save_and_load_with_password(tmp_path: Path) -> None:
    signer = PemSigner.generate()
    path = tmp_path / "key.pem"
    signer.save(path, password="correct horse")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = PemSigner.from_file(path, password=b"correct horse")
    assert loaded.key_id == signer.key_id
    loaded.public_key.verify(b"data", signer.sign(b"data"))


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    PemSigner.generate().save(path)
    with pytest.raises(FileExistsError):
        PemSigner.generate().save(path)


def test_wrong_or_missing_password_is_a_key_format_error() -> None:
    pem = PemSigner.generate().private_key_pem("secret")
    with pytest.raises(KeyFormatError) as wrong:
        PemSigner.from_pem(pem, password="not-secret")
    assert wrong.value.code == "KEY_INVALID"
    with pytest.raises(KeyFormatError):
        PemSigner.from_pem(pem)
    with pytest.raises(KeyFormatError):
        PemSigner.from_pem(PemSigner.generate().private_key_pem(), password="unexpected")


def test_empty_password_rejected() -> None:
    with pytest.raises(KeyFormatError, match="empty password"):
        PemSigner.generate().private_key_pem(password="")


def test_garbage_pem_rejected() -> None:
    with pytest.raises(KeyFormatError):
        PublicKey.from_pem(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(KeyFormatError):
        PemSigner.from_pem("not a key")


def test_only_p256_keys_are_accepted() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(KeyFormatError, match="P-256"):
        PemSigner(p384)
    p384_pub = p384.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(KeyFormatError, match="P-256"):
        PublicKey.from_pem(p384_pub)
    ed_pub = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFormatError, match="not an ECDSA key"):
        PublicKey.from_pem(ed_pub)


def test_sign_and_verify() -> None:
    signer = PemSigner.generate()
    signature = signer.sign(b"hello")
    assert signature[0] == 0x30  # DER SEQUENCE
    signer.public_key.verify(b"hello", signature)
    assert signer.public_key.is_valid(b"hello", signature)
    assert not signer.public_key.is_valid(b"hellO", signature)


def test_verify_failures_raise_typed_error() -> None:
    signer = PemSigner.generate()
    signature = bytearray(signer.sign(b"hello"))
    signature[-1] ^= 0x01
    with pytest.raises(InvalidSignatureError) as excinfo:
        signer.public_key.verify(b"hello", bytes(signature))
    assert excinfo.value.code == "SIGNATURE_INVALID"
    with pytest.raises(InvalidSignatureError):
        signer.public_key.verify(b"hello", b"not der at all")
    with pytest.raises(InvalidSignatureError):
        PemSigner.generate().public_key.verify(b"hello", signer.sign(b"hello"))


def test_pem_signer_satisfies_signer_protocol() -> None:
    assert isinstance(PemSigner.generate(), Signer)


def test_explicit_key_id_for_externally_named_keys() -> None:
    signer = PemSigner(ec.generate_private_key(ec.SECP256R1()), key_id="kms://tenant-a/key-1")
    assert signer.key_id == "kms://tenant-a/key-1"
    assert signer.public_key.key_id != signer.key_id


def test_cosign_blob_round_trip() -> None:
    signer = PemSigner.generate()
    b64 = cosign_sign_blob(signer, b"blob bytes")
    der = base64.b64decode(b64, validate=True)
    signer.public_key.verify(b"blob bytes", der)
    cosign_verify_blob(signer.public_key_pem(), b"blob bytes", b64)
    cosign_verify_blob(signer.public_key_pem().decode(), b"blob bytes", b64 + "\n")
    cosign_verify_blob(signer.public_key, b"blob bytes", b64.encode())


def test_cosign_verify_rejects_tampering() -> None:
    signer = PemSigner.generate()
    b64 = cosign_sign_blob(signer, b"blob")
    with pytest.raises(InvalidSignatureError):
        cosign_verify_blob(signer.public_key_pem(), b"blob!", b64)
    with pytest.raises(InvalidSignatureError, match="base64"):
        cosign_verify_blob(signer.public_key_pem(), b"blob", "%%%not-base64%%%")
    with pytest.raises(InvalidSignatureError, match="empty"):
        cosign_verify_blob(signer.public_key_pem(), b"blob", "")
    with pytest.raises(InvalidSignatureError):
        cosign_verify_blob(PemSigner.generate().public_key_pem(), b"blob", b64)


@requires_openssl
def test_cosign_signature_verifies_with_openssl(tmp_path: Path) -> None:
    # cosign verify-blob --key does ECDSA-SHA256 over the raw blob, as openssl dgst does.
    signer = PemSigner.generate()
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"interop \x00\xff bytes")
    (tmp_path / "pub.pem").write_bytes(signer.public_key_pem())
    (tmp_path / "sig.der").write_bytes(
        base64.b64decode(cosign_sign_blob(signer, blob.read_bytes()))
    )
    result = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", "pub.pem", "-signature", "sig.der", "blob.bin"],
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert b"Verified OK" in result.stdout


@requires_openssl
def test_openssl_signature_and_key_id_match_ours(tmp_path: Path) -> None:
    def openssl(*args: str) -> bytes:
        return subprocess.run(
            ["openssl", *args], cwd=tmp_path, capture_output=True, check=True
        ).stdout

    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "key.pem")
    openssl("pkey", "-in", "key.pem", "-pubout", "-out", "pub.pem")
    (tmp_path / "blob.bin").write_bytes(b"signed by openssl")
    openssl("dgst", "-sha256", "-sign", "key.pem", "-out", "sig.der", "blob.bin")
    spki_der = openssl("pkey", "-pubin", "-in", "pub.pem", "-outform", "DER")

    public = PublicKey.from_file(tmp_path / "pub.pem")
    assert public.key_id == hashlib.sha256(spki_der).hexdigest()
    sig_b64 = base64.b64encode((tmp_path / "sig.der").read_bytes()).decode()
    cosign_verify_blob(public, b"signed by openssl", sig_b64)
    # The SEC1 private key openssl wrote loads too, with the same key id.
    assert PemSigner.from_file(tmp_path / "key.pem").key_id == public.key_id


def test_keyring_add_get_remove() -> None:
    first, second = PemSigner.generate(), PemSigner.generate()
    ring = KeyRing([first.public_key])
    assert first.key_id in ring
    assert ring.add_pem(second.public_key_pem()) == second.key_id
    assert len(ring) == 2
    assert ring.get(second.key_id) == second.public_key
    assert ring.find("missing") is None
    assert ring.key_ids() == tuple(sorted([first.key_id, second.key_id]))
    ring.remove(first.key_id)
    assert first.key_id not in ring
    with pytest.raises(UnknownKeyError) as excinfo:
        ring.get(first.key_id)
    assert excinfo.value.code == "UNKNOWN_KEY"
    with pytest.raises(UnknownKeyError):
        ring.remove(first.key_id)


def test_keyring_readding_same_key_is_idempotent_but_conflicts_are_rejected() -> None:
    first, second = PemSigner.generate(), PemSigner.generate()
    ring = KeyRing.from_pems([first.public_key_pem()])
    assert ring.add(first.public_key) == first.key_id
    assert len(ring) == 1
    ring.add(first.public_key, key_id="alias")
    with pytest.raises(KeyConflictError) as excinfo:
        ring.add(second.public_key, key_id="alias")
    assert excinfo.value.code == "KEY_CONFLICT"
    assert ring.get("alias") == first.public_key
    with pytest.raises(KeyConflictError):
        ring.add(second.public_key, key_id="")
