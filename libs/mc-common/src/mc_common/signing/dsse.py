"""DSSE envelopes (secure-systems-lab/dsse v1): PAE, signing, strict JSON form, verification.

Verification policy: every signature that names a registered key must verify (a signature
claiming a trusted key that does not verify means tampering, so we reject instead of
ignoring it as a plain DSSE threshold check would), and at least one must verify.
A signature with an empty ``keyid`` is tried against every key in the ring.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mc_common.signing.errors import (
    EnvelopeFormatError,
    InvalidSignatureError,
    NoSignaturesError,
    PayloadTypeError,
    UnknownKeyError,
)
from mc_common.signing.keyring import KeyRing
from mc_common.signing.keys import Signer

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
"""The payloadType of an envelope whose payload is an in-toto Statement."""

_ENVELOPE_FIELDS = frozenset({"payload", "payloadType", "signatures"})
_SIGNATURE_REQUIRED = frozenset({"sig"})
_SIGNATURE_FIELDS = frozenset({"sig", "keyid"})


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE Pre-Authentication Encoding: ``DSSEv1 SP LEN(type) SP type SP LEN(body) SP body``.

    Lengths are byte lengths (of the UTF-8 type and of the body) in ASCII decimal.
    """
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


@dataclass(frozen=True, slots=True)
class Signature:
    """One DSSE signature: the signer's key id (may be empty) and the raw signature bytes."""

    keyid: str
    sig: bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    """A DSSE envelope with its payload and signatures already base64-decoded."""

    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...]

    def pae(self) -> bytes:
        """The bytes every signature in this envelope signs."""
        return pae(self.payload_type, self.payload)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object form, with standard (padded) base64 for payload and signatures."""
        return {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                for s in self.signatures
            ],
        }

    def to_json(self) -> str:
        """Compact JSON text of the envelope."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: bytes | str) -> Envelope:
        """Parse envelope JSON strictly; raise ``EnvelopeFormatError`` naming the problem.

        Rejects invalid UTF-8 or JSON, duplicate keys, unknown or missing fields, wrong
        types and invalid base64. ``keyid`` is optional per the DSSE spec (read as "").
        """
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            obj = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
        except UnicodeDecodeError as exc:
            raise EnvelopeFormatError(f"envelope is not valid UTF-8: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise EnvelopeFormatError(f"envelope is not valid JSON: {exc}") from exc
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: object) -> Envelope:
        """Validate a parsed JSON object as an envelope (same rules as ``from_json``)."""
        fields = _check_object(obj, "envelope", _ENVELOPE_FIELDS, _ENVELOPE_FIELDS)
        payload_type = fields["payloadType"]
        if not isinstance(payload_type, str) or not payload_type:
            raise EnvelopeFormatError("envelope.payloadType must be a non-empty string")
        payload = _b64decode(fields["payload"], "envelope.payload")
        raw_signatures = fields["signatures"]
        if not isinstance(raw_signatures, list):
            raise EnvelopeFormatError("envelope.signatures must be an array")
        signatures = []
        for index, raw in enumerate(raw_signatures):
            where = f"envelope.signatures[{index}]"
            sig_fields = _check_object(raw, where, _SIGNATURE_REQUIRED, _SIGNATURE_FIELDS)
            keyid = sig_fields.get("keyid", "")
            if not isinstance(keyid, str):
                raise EnvelopeFormatError(f"{where}.keyid must be a string")
            sig = _b64decode(sig_fields["sig"], f"{where}.sig")
            if not sig:
                raise EnvelopeFormatError(f"{where}.sig is empty")
            signatures.append(Signature(keyid=keyid, sig=sig))
        return cls(payload=payload, payload_type=payload_type, signatures=tuple(signatures))


@dataclass(frozen=True, slots=True)
class VerifiedEnvelope:
    """What a successful verification established: the payload and which keys signed it."""

    payload: bytes
    payload_type: str
    key_ids: tuple[str, ...]


def sign_envelope(payload: bytes, payload_type: str, signer: Signer) -> Envelope:
    """Sign ``PAE(payload_type, payload)`` and wrap it in a single-signature envelope."""
    signature = Signature(keyid=signer.key_id, sig=signer.sign(pae(payload_type, payload)))
    return Envelope(payload=payload, payload_type=payload_type, signatures=(signature,))


def add_signature(envelope: Envelope, signer: Signer) -> Envelope:
    """Return a copy of ``envelope`` with one more signature (co-signing)."""
    signature = Signature(keyid=signer.key_id, sig=signer.sign(envelope.pae()))
    return Envelope(
        payload=envelope.payload,
        payload_type=envelope.payload_type,
        signatures=(*envelope.signatures, signature),
    )


def verify_envelope_detailed(
    envelope: Envelope, keyring: KeyRing, *, payload_type: str | None = None
) -> VerifiedEnvelope:
    """Verify ``envelope`` against ``keyring`` (see module docstring for the policy).

    Raises ``NoSignaturesError``, ``UnknownKeyError`` (no signature names a registered key),
    ``InvalidSignatureError`` (a signature does not verify), or ``PayloadTypeError`` when
    ``payload_type`` is given and differs from the envelope's.
    """
    if not envelope.signatures:
        raise NoSignaturesError("envelope has no signatures")
    message = envelope.pae()
    verified: list[str] = []
    unknown: list[str] = []
    for index, signature in enumerate(envelope.signatures):
        key = keyring.find(signature.keyid) if signature.keyid else None
        if key is not None:
            if not key.is_valid(message, signature.sig):
                raise InvalidSignatureError(
                    f"signature {index} does not verify with key {signature.keyid}"
                )
            verified.append(signature.keyid)
            continue
        # DSSE's keyid is an unauthenticated hint: a signature without one, or naming no key of
        # the ring (a key id computed another way), is tried against every key of the ring.
        matching = [kid for kid, key in keyring.items() if key.is_valid(message, signature.sig)]
        if matching:
            verified.append(matching[0])
        elif not signature.keyid and len(keyring):
            raise InvalidSignatureError(
                f"signature {index} has no keyid and verifies with no registered key"
            )
        else:
            unknown.append(signature.keyid)
    if not verified:
        raise UnknownKeyError(
            "no signature is from a registered key (key ids: "
            + ", ".join(repr(kid) for kid in unknown)
            + ")"
        )
    if payload_type is not None and envelope.payload_type != payload_type:
        raise PayloadTypeError(
            f"payloadType is {envelope.payload_type!r}, expected {payload_type!r}"
        )
    return VerifiedEnvelope(
        payload=envelope.payload, payload_type=envelope.payload_type, key_ids=tuple(verified)
    )


def verify_envelope(
    envelope: Envelope, keyring: KeyRing, *, payload_type: str | None = None
) -> bytes:
    """Verify ``envelope`` and return its payload bytes; raise a ``SignatureError`` if not."""
    return verify_envelope_detailed(envelope, keyring, payload_type=payload_type).payload


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise EnvelopeFormatError(f"duplicate JSON key {key!r} in envelope")
        result[key] = value
    return result


def _check_object(
    obj: object, where: str, required: frozenset[str], allowed: frozenset[str]
) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise EnvelopeFormatError(f"{where} must be a JSON object")
    missing = sorted(required - obj.keys())
    if missing:
        raise EnvelopeFormatError(f"{where} is missing field(s): {', '.join(missing)}")
    unknown = sorted(obj.keys() - allowed)
    if unknown:
        raise EnvelopeFormatError(f"{where} has unknown field(s): {', '.join(unknown)}")
    return obj


def _b64decode(value: object, where: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not (DSSE allows either alphabet)."""
    if not isinstance(value, str):
        raise EnvelopeFormatError(f"{where} must be a base64 string")
    text = value
    if "-" in text or "_" in text:
        if "+" in text or "/" in text:
            raise EnvelopeFormatError(f"{where} mixes standard and URL-safe base64 alphabets")
        text = text.replace("-", "+").replace("_", "/")
    if len(text) % 4 and not text.endswith("="):
        text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeFormatError(f"{where} is not valid base64: {exc}") from exc
