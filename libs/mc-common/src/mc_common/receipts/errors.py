"""Typed errors raised by the receipts package; each carries a stable ``code`` string."""

from __future__ import annotations


class ReceiptError(ValueError):
    """Base class for receipt building, canonicalization and verification errors.

    ``code`` is a stable machine-readable string (the lead maps it to a gRPC status).
    """

    code: str = "RECEIPT_ERROR"


class CanonicalizationError(ReceiptError):
    """A value cannot be written as RFC 8785 canonical JSON (within our float-free profile)."""

    code = "NOT_CANONICALIZABLE"


class FloatNotAllowedError(CanonicalizationError):
    """A float (or a non-integer JSON number) was found; receipts use integers only."""

    code = "FLOAT_NOT_ALLOWED"


class JsonFormatError(ReceiptError):
    """Bytes are not strict JSON (invalid UTF-8, syntax, duplicate keys, NaN, huge integers)."""

    code = "JSON_MALFORMED"


class ChainLinkError(ReceiptError):
    """A receipt cannot be linked to the given predecessor (other tenant, bad digest)."""

    code = "CHAIN_LINK_INVALID"


class ReceiptVerificationError(ReceiptError):
    """Raised by ``VerificationReport.raise_if_invalid``; ``code`` is the first failed check."""

    def __init__(self, message: str, *, code: str, failed_codes: tuple[str, ...]) -> None:
        super().__init__(message)
        self.code = code
        self.failed_codes = failed_codes
