"""Typed errors raised by the signing package; each carries a stable ``code`` string."""

from __future__ import annotations


class SignatureError(ValueError):
    """Base class for every signing, envelope and bundle verification failure.

    ``code`` is a stable machine-readable string (the lead maps it to a gRPC status);
    the message is for humans.
    """

    code: str = "SIGNATURE_ERROR"


class KeyFormatError(SignatureError):
    """A key could not be loaded: bad PEM/DER, wrong password, or not an ECDSA P-256 key."""

    code = "KEY_INVALID"


class KeyConflictError(SignatureError):
    """A key id is already registered in a key ring for a different public key."""

    code = "KEY_CONFLICT"


class UnknownKeyError(SignatureError):
    """No public key is registered under the requested key id."""

    code = "UNKNOWN_KEY"


class InvalidSignatureError(SignatureError):
    """A signature does not verify (or is not valid base64 / DER) for the given data and key."""

    code = "SIGNATURE_INVALID"


class EnvelopeFormatError(SignatureError):
    """A DSSE envelope is malformed: bad JSON, missing/unknown fields, wrong types, bad base64."""

    code = "ENVELOPE_MALFORMED"


class NoSignaturesError(SignatureError):
    """A DSSE envelope carries no signatures at all."""

    code = "NO_SIGNATURES"


class PayloadTypeError(SignatureError):
    """A DSSE envelope's payloadType is not the one the caller expects."""

    code = "WRONG_PAYLOAD_TYPE"


class SigstoreBundleError(SignatureError):
    """A Sigstore bundle or trusted root could not be parsed."""

    code = "SIGSTORE_BUNDLE_MALFORMED"


class SigstoreTrustedRootError(SignatureError):
    """A Sigstore trusted root file is missing or unusable."""

    code = "SIGSTORE_TRUSTED_ROOT_INVALID"


class SigstoreVerificationError(SignatureError):
    """A Sigstore bundle failed verification (chain, transparency log, signature or policy)."""

    code = "SIGSTORE_VERIFICATION_FAILED"


class SigstoreSubjectMismatchError(SigstoreVerificationError):
    """A DSSE bundle verified, but the artifact's digest is not one of its in-toto subjects."""

    code = "SIGSTORE_SUBJECT_MISMATCH"
