"""ECDSA P-256 keys: the ``Signer`` seam, a PEM-backed signer, public keys and stable key ids.

Key ids are the lowercase hex SHA-256 of the DER SubjectPublicKeyInfo of the public key.
Cosign leaves a key's ``keyid`` empty by default; we need ids that are stable across
processes and derivable by any party holding the public key, and a fingerprint of the
SPKI is exactly that (it is also what ``openssl pkey -pubin -outform DER | sha256sum`` gives).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from mc_common.signing.errors import InvalidSignatureError, KeyFormatError

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def compute_key_id(spki_der: bytes) -> str:
    """Return the key id of a public key: hex SHA-256 of its DER SubjectPublicKeyInfo."""
    return hashlib.sha256(spki_der).hexdigest()


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _password_bytes(password: bytes | str | None) -> bytes | None:
    if password is None:
        return None
    raw = _as_bytes(password)
    if not raw:
        raise KeyFormatError("an empty password is not allowed; pass None for no password")
    return raw


def _require_p256_curve(curve: ec.EllipticCurve, what: str) -> None:
    if not isinstance(curve, ec.SECP256R1):
        raise KeyFormatError(f"{what} uses curve {curve.name}; only P-256 is supported")


def _p256_public(key: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise KeyFormatError(f"public key is not an ECDSA key (got {type(key).__name__})")
    _require_p256_curve(key.curve, "public key")
    return key


def _p256_private(key: object) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFormatError(f"private key is not an ECDSA key (got {type(key).__name__})")
    _require_p256_curve(key.curve, "private key")
    return key


@runtime_checkable
class Signer(Protocol):
    """Anything that can produce ECDSA P-256 / SHA-256 signatures under a stable key id.

    This protocol is the seam where a KMS (AWS KMS, GCP KMS, Vault transit, an HSM) plugs in
    later: an implementation only has to expose its key id, return DER-encoded ECDSA-SHA256
    signatures over raw bytes, and hand out its public key as PEM. Nothing in ``mc_common``
    needs the private key itself. ``PemSigner`` is the in-process implementation.
    """

    @property
    def key_id(self) -> str:
        """The id verifiers use to find this signer's public key in a ``KeyRing``."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Return the DER-encoded ECDSA-SHA256 signature of ``data``."""
        ...

    def public_key_pem(self) -> bytes:
        """Return the public key as a PEM SubjectPublicKeyInfo."""
        ...


class PublicKey:
    """An ECDSA P-256 public key that verifies DER ECDSA-SHA256 signatures."""

    __slots__ = ("_der", "_key", "_key_id")

    def __init__(self, key: ec.EllipticCurvePublicKey) -> None:
        self._key = _p256_public(key)
        self._der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._key_id = compute_key_id(self._der)

    @classmethod
    def from_pem(cls, pem: bytes | str) -> PublicKey:
        """Load a PEM SubjectPublicKeyInfo ("BEGIN PUBLIC KEY")."""
        try:
            key = serialization.load_pem_public_key(_as_bytes(pem))
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError(f"cannot load PEM public key: {exc}") from exc
        return cls(_p256_public(key))

    @classmethod
    def from_der(cls, der: bytes) -> PublicKey:
        """Load a DER SubjectPublicKeyInfo."""
        try:
            key = serialization.load_der_public_key(der)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError(f"cannot load DER public key: {exc}") from exc
        return cls(_p256_public(key))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PublicKey:
        """Load a PEM public key from a file."""
        return cls.from_pem(Path(path).read_bytes())

    @property
    def key_id(self) -> str:
        """Hex SHA-256 of the DER SubjectPublicKeyInfo."""
        return self._key_id

    def jwk(self) -> dict[str, str]:
        """The RFC 7517 JSON Web Key of this key (kid = key_id, alg ES256, use sig)."""
        numbers = self._key.public_numbers()

        def b64url(value: int) -> str:
            return base64.urlsafe_b64encode(value.to_bytes(32, "big")).rstrip(b"=").decode()

        return {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(numbers.x),
            "y": b64url(numbers.y),
            "kid": self._key_id,
            "alg": "ES256",
            "use": "sig",
        }

    def der(self) -> bytes:
        """The DER SubjectPublicKeyInfo."""
        return self._der

    def pem(self) -> bytes:
        """The PEM SubjectPublicKeyInfo ("BEGIN PUBLIC KEY")."""
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, data: bytes, signature: bytes) -> None:
        """Check an ECDSA-SHA256 signature over ``data``; raise ``InvalidSignatureError``.

        The signature is ASN.1 DER (what DSSE, cosign and securesystemslib write) or, as some
        signers (WebCrypto, JOSE) write it, the 64-byte IEEE P1363 form r || s.
        """
        if len(signature) == 64:  # never DER for P-256 in practice; try r || s first
            raw = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            try:
                self._key.verify(raw, data, _ECDSA_SHA256)
                return
            except InvalidSignature:
                pass
        try:
            self._key.verify(signature, data, _ECDSA_SHA256)
        except (InvalidSignature, ValueError) as exc:
            raise InvalidSignatureError(
                f"signature does not verify with key {self._key_id}"
            ) from exc

    def is_valid(self, data: bytes, signature: bytes) -> bool:
        """Return whether ``signature`` verifies over ``data`` (``verify`` without raising)."""
        try:
            self.verify(data, signature)
        except InvalidSignatureError:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other._der == self._der

    def __hash__(self) -> int:
        return hash(self._der)

    def __repr__(self) -> str:
        return f"PublicKey(key_id={self._key_id!r})"


class PemSigner:
    """A ``Signer`` holding an in-process ECDSA P-256 private key, loadable from PKCS#8 PEM.

    ``key_id`` defaults to the public key's fingerprint (see module docstring); pass one
    explicitly only to mirror an id assigned elsewhere.
    """

    __slots__ = ("_key", "_key_id", "_public")

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, *, key_id: str | None = None):
        self._key = _p256_private(private_key)
        self._public = PublicKey(self._key.public_key())
        self._key_id = key_id if key_id is not None else self._public.key_id

    @classmethod
    def generate(cls) -> PemSigner:
        """Create a signer with a fresh random P-256 key."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, pem: bytes | str, password: bytes | str | None = None) -> PemSigner:
        """Load a PEM private key (PKCS#8, encrypted when ``password`` is given)."""
        try:
            key = serialization.load_pem_private_key(
                _as_bytes(pem), password=_password_bytes(password)
            )
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # cryptography raises TypeError for a missing/unexpected password and
            # ValueError for a wrong password or undecodable data.
            raise KeyFormatError(f"cannot load PEM private key: {exc}") from exc
        return cls(_p256_private(key))

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], password: bytes | str | None = None
    ) -> PemSigner:
        """Load a PEM private key from a file."""
        return cls.from_pem(Path(path).read_bytes(), password)

    @property
    def key_id(self) -> str:
        """The id under which verifiers look up this signer's public key."""
        return self._key_id

    @property
    def public_key(self) -> PublicKey:
        """The matching public key."""
        return self._public

    def sign(self, data: bytes) -> bytes:
        """Return the DER-encoded ECDSA-SHA256 signature of ``data``."""
        return self._key.sign(data, _ECDSA_SHA256)

    def public_key_pem(self) -> bytes:
        """The public key as PEM SubjectPublicKeyInfo."""
        return self._public.pem()

    def private_key_pem(self, password: bytes | str | None = None) -> bytes:
        """The private key as PKCS#8 PEM, encrypted with ``password`` when given."""
        pw = _password_bytes(password)
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(pw)
            if pw is not None
            else serialization.NoEncryption()
        )
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def save(self, path: str | os.PathLike[str], password: bytes | str | None = None) -> None:
        """Write the private key PEM to a new file with mode 0600; never overwrites a file."""
        data = self.private_key_pem(password)
        fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)

    def __repr__(self) -> str:
        return f"PemSigner(key_id={self._key_id!r})"
