"""Signing for MC: ECDSA P-256 keys and key rings, cosign-compatible blob signatures, DSSE
envelopes, and offline verification of keyless Sigstore bundles.

sigstore-python is imported lazily (only when a bundle is verified), so importing this package
stays cheap for services that never touch Sigstore.
"""

from mc_common.signing.cosign import cosign_sign_blob, cosign_verify_blob
from mc_common.signing.dsse import (
    IN_TOTO_PAYLOAD_TYPE,
    Envelope,
    Signature,
    VerifiedEnvelope,
    add_signature,
    pae,
    sign_envelope,
    verify_envelope,
    verify_envelope_detailed,
)
from mc_common.signing.errors import (
    EnvelopeFormatError,
    InvalidSignatureError,
    KeyConflictError,
    KeyFormatError,
    NoSignaturesError,
    PayloadTypeError,
    SignatureError,
    SigstoreBundleError,
    SigstoreSubjectMismatchError,
    SigstoreTrustedRootError,
    SigstoreVerificationError,
    UnknownKeyError,
)
from mc_common.signing.keyring import KeyRing
from mc_common.signing.keys import PemSigner, PublicKey, Signer, compute_key_id
from mc_common.signing.sigstore_verify import (
    SigstoreVerification,
    load_trusted_root,
    verify_sigstore_bundle,
    verify_sigstore_dsse_bundle,
)

__all__ = [
    "IN_TOTO_PAYLOAD_TYPE",
    "Envelope",
    "EnvelopeFormatError",
    "InvalidSignatureError",
    "KeyConflictError",
    "KeyFormatError",
    "KeyRing",
    "NoSignaturesError",
    "PayloadTypeError",
    "PemSigner",
    "PublicKey",
    "Signature",
    "SignatureError",
    "Signer",
    "SigstoreBundleError",
    "SigstoreSubjectMismatchError",
    "SigstoreTrustedRootError",
    "SigstoreVerification",
    "SigstoreVerificationError",
    "UnknownKeyError",
    "VerifiedEnvelope",
    "add_signature",
    "compute_key_id",
    "cosign_sign_blob",
    "cosign_verify_blob",
    "load_trusted_root",
    "pae",
    "sign_envelope",
    "verify_envelope",
    "verify_envelope_detailed",
    "verify_sigstore_bundle",
    "verify_sigstore_dsse_bundle",
]
