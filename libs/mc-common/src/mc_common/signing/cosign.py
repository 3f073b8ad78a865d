"""Cosign-compatible blob signatures: base64 of a DER ECDSA-SHA256 signature over the raw blob.

This is the format ``cosign sign-blob --key`` prints and ``cosign verify-blob --key`` reads
(and what ``openssl dgst -sha256 -sign`` produces before base64), so signatures made here
verify with cosign and vice versa.
"""

from __future__ import annotations

import base64
import binascii

from mc_common.signing.errors import InvalidSignatureError
from mc_common.signing.keys import PublicKey, Signer


def cosign_sign_blob(signer: Signer, data: bytes) -> str:
    """Sign ``data`` and return the signature as standard base64, as cosign prints it."""
    return base64.b64encode(signer.sign(data)).decode("ascii")


def cosign_verify_blob(
    public_key: PublicKey | bytes | str, data: bytes, signature_b64: bytes | str
) -> None:
    """Verify a cosign blob signature; raise ``InvalidSignatureError`` (or ``KeyFormatError``).

    ``public_key`` is a ``PublicKey`` or PEM text; surrounding whitespace in the signature
    (a trailing newline from a ``.sig`` file) is ignored, as cosign does.
    """
    key = public_key if isinstance(public_key, PublicKey) else PublicKey.from_pem(public_key)
    text = (
        signature_b64.decode("ascii", "replace")
        if isinstance(signature_b64, bytes)
        else (signature_b64)
    )
    try:
        signature = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidSignatureError(f"signature is not valid base64: {exc}") from exc
    if not signature:
        raise InvalidSignatureError("signature is empty")
    key.verify(data, signature)
