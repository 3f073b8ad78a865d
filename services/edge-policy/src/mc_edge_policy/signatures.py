"""Bundle signatures in OPA's format: one compact JWS in `/.signatures.json`, and its verifier.

The JWS payload lists every file of the bundle with its OPA digest (`opa_hash`); the header
carries the signing key's `kid`. The verifier applies OPA's rules in OPA's order (exactly one
JWT; key id from configuration, then the `kid` header, then the deprecated `keyid` claim; the
configured algorithm, never the header's; the scope; every file listed and matching; nothing
listed that is missing), and adds key validity windows so that keys rotate with an overlap in
which both are accepted.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OctKey, RSAKey

from mc_edge_policy.bundle import SIGNATURES
from mc_edge_policy.opa_hash import (
    DEFAULT_ALGORITHM,
    HASH_ALGORITHMS,
    CanonicalJsonError,
    file_digest,
)

SUPPORTED_JWS_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "HS256"}
)
MAX_SIGNATURES_BYTES = 1024 * 1024

JoseKey = ECKey | RSAKey | OctKey


class SignatureError(ValueError):
    """The bundle's signature is missing, malformed, made with an unknown key, or wrong."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key a verifier trusts, with the window in which it may sign (for rotation)."""

    key_id: str
    algorithm: str
    key: JoseKey
    not_before: datetime | None = None
    not_after: datetime | None = None

    @classmethod
    def from_pem(
        cls,
        key_id: str,
        pem: bytes | str,
        algorithm: str = "ES256",
        *,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> VerificationKey:
        raw = pem.encode() if isinstance(pem, str) else pem
        key: JoseKey = (
            RSAKey.import_key(raw) if algorithm.startswith("RS") else ECKey.import_key(raw)
        )
        return cls(key_id, algorithm, key, not_before, not_after)

    def valid_at(self, when: datetime) -> bool:
        if self.not_before is not None and when < self.not_before:
            return False
        return self.not_after is None or when < self.not_after


class KeyRing:
    """The verification keys by id; during a rotation both the old and the new key are here."""

    def __init__(self, keys: Iterable[VerificationKey] = ()) -> None:
        self._keys = {k.key_id: k for k in keys}

    def get(self, key_id: str) -> VerificationKey | None:
        return self._keys.get(key_id)

    def __len__(self) -> int:
        return len(self._keys)

    def key_ids(self) -> list[str]:
        return sorted(self._keys)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key that signs bundles under `key_id`."""

    key_id: str
    algorithm: str
    key: ECKey | RSAKey

    @classmethod
    def generate(cls, key_id: str) -> SigningKey:
        return cls(key_id, "ES256", ECKey.generate_key("P-256"))

    @classmethod
    def from_pem(cls, key_id: str, pem: bytes, algorithm: str = "ES256") -> SigningKey:
        key: ECKey | RSAKey = (
            RSAKey.import_key(pem) if algorithm.startswith("RS") else ECKey.import_key(pem)
        )
        return cls(key_id, algorithm, key)

    def private_pem(self) -> bytes:
        return self.key.as_pem(private=True)

    def public_pem(self) -> bytes:
        return self.key.as_pem(private=False)

    def verification_key(
        self, *, not_before: datetime | None = None, not_after: datetime | None = None
    ) -> VerificationKey:
        public = self.public_pem()
        return VerificationKey.from_pem(
            self.key_id, public, self.algorithm, not_before=not_before, not_after=not_after
        )


def sign_files(files: Mapping[str, bytes], key: SigningKey, *, issued_at: datetime) -> bytes:
    """The `.signatures.json` content signing every file in `files` (not itself)."""
    entries = [
        {"name": name, "hash": file_digest(name, content), "algorithm": DEFAULT_ALGORITHM}
        for name, content in sorted(files.items())
        if name != SIGNATURES
    ]
    payload = {"files": entries, "iat": int(issued_at.timestamp()), "keyid": key.key_id}
    token = jws.serialize_compact(
        {"alg": key.algorithm, "kid": key.key_id},
        json.dumps(payload, sort_keys=True, separators=(",", ":")).encode(),
        key.key,
        algorithms=[key.algorithm],
    )
    return json.dumps({"signatures": [token]}, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One file of a signature payload."""

    name: str
    hash: str
    algorithm: str


@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    """What a verified JWS says: the signing key and the files it covers."""

    key_id: str
    files: dict[str, FileInfo]
    issued_at: int | None


def _b64decode(segment: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"failed to base64 decode JWT {what}: {exc}") from exc


def parse_signatures_file(raw: bytes) -> list[str]:
    """The JWTs of a `.signatures.json`."""
    if len(raw) > MAX_SIGNATURES_BYTES:
        raise SignatureError(".signatures.json is too large")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureError(f"bundle load failed on signatures decode: {exc}") from exc
    signatures = value.get("signatures") if isinstance(value, dict) else None
    if signatures is None:
        signatures = []
    if not isinstance(signatures, list) or not all(isinstance(s, str) for s in signatures):
        raise SignatureError(".signatures.json: signatures must be a list of strings")
    return signatures


def verify_token(
    token: str,
    keys: KeyRing,
    *,
    now: datetime,
    key_id: str = "",
    scope: str = "",
) -> VerifiedSignature:
    """Verify one bundle JWT as OPA does (plus key validity windows)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise SignatureError("failed to split compact JWT: invalid number of segments")
    try:
        header = json.loads(_b64decode(parts[0], "headers"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SignatureError(f"failed to parse JWT headers: {exc}") from exc
    try:
        payload = json.loads(_b64decode(parts[1], "payload"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SignatureError(f"failed to parse JWT payload: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise SignatureError("JWT header and payload must be JSON objects")
    files = _payload_files(payload.get("files"))
    chosen = key_id or _str(header.get("kid")) or _str(payload.get("keyid"))
    if not chosen:
        raise SignatureError("verification key ID is empty")
    key = keys.get(chosen)
    if key is None:
        raise SignatureError(f"verification key corresponding to ID {chosen} not found")
    if key.algorithm not in SUPPORTED_JWS_ALGORITHMS:
        raise SignatureError(f"unknown signature algorithm: {key.algorithm}")
    if not key.valid_at(now):
        raise SignatureError(f"verification key {chosen} is outside its validity window")
    try:
        jws.deserialize_compact(token, key.key, algorithms=[key.algorithm])
    except (JoseError, ValueError) as exc:
        raise SignatureError(f"failed to verify JWT signature: {exc}") from exc
    if _str(payload.get("scope")) != scope:
        raise SignatureError("scope mismatch")
    issued = payload.get("iat")
    return VerifiedSignature(chosen, files, issued if isinstance(issued, int) else None)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _payload_files(value: Any) -> dict[str, FileInfo]:
    if not isinstance(value, list):
        raise SignatureError("JWT payload files must be a list")
    files: dict[str, FileInfo] = {}
    for entry in value:
        if not isinstance(entry, dict):
            raise SignatureError("JWT payload files must be objects")
        name, digest, algorithm = (_str(entry.get(k)) for k in ("name", "hash", "algorithm"))
        if not name:
            raise SignatureError("JWT payload file without a name")
        files[name.lstrip("/")] = FileInfo(name.lstrip("/"), digest, algorithm)
    return files


def verify_file(name: str, content: bytes, files: dict[str, FileInfo]) -> None:
    """Check one bundle file against the signed list, and cross it off (OPA's VerifyBundleFile)."""
    info = files.get(name)
    if info is None:
        raise SignatureError(f"file {name} not included in bundle signature")
    if not info.algorithm:
        raise SignatureError(f"no hashing algorithm provided for file {name}")
    if info.algorithm not in HASH_ALGORITHMS:
        raise SignatureError(f"unsupported hashing algorithm: {info.algorithm}")
    try:
        actual = file_digest(name, content, info.algorithm)
    except CanonicalJsonError as exc:
        raise SignatureError(f"{name}: {exc}") from exc
    if actual != info.hash.lower():
        raise SignatureError(f"{name}: digest mismatch (want: {info.hash}, got: {actual})")
    del files[name]


def verify_bundle_files(
    files: Mapping[str, bytes],
    keys: KeyRing,
    *,
    now: datetime | None = None,
    key_id: str = "",
    scope: str = "",
) -> VerifiedSignature:
    """Verify a bundle's files (by normalized name) against its `.signatures.json`.

    Raises SignatureError unless exactly one JWT verifies under a trusted key and covers every
    file of the bundle, and every file it lists is present.
    """
    when = now or datetime.now(UTC)
    raw = files.get(SIGNATURES)
    if raw is None:
        raise SignatureError("bundle missing .signatures.json file")
    tokens = parse_signatures_file(raw)
    if not tokens:
        raise SignatureError(".signatures.json: missing JWT (expected exactly one)")
    if len(tokens) > 1:
        raise SignatureError(".signatures.json: multiple JWTs not supported (expected exactly one)")
    verified = verify_token(tokens[0], keys, now=when, key_id=key_id, scope=scope)
    remaining = dict(verified.files)
    for name in sorted(files):
        if name != SIGNATURES:
            verify_file(name, files[name], remaining)
    if remaining:
        missing = " ".join(sorted(remaining))
        raise SignatureError(
            f"file(s) [{missing}] specified in bundle signatures but not found in the target bundle"
        )
    return verified
