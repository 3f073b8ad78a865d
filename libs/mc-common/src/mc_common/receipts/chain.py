"""Building and signing receipts as links of a per-tenant hash chain.

Receipt ``n`` of a tenant carries ``sequence = n`` and ``previous_digest`` = digest of receipt
``n - 1`` ("" for ``n = 1``); ``ChainLink`` is the (tenant, sequence, digest) a service stores
as the tenant's chain head and passes in to build the next receipt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mc_common.receipts.canonical import sha256_hex
from mc_common.receipts.errors import ChainLinkError
from mc_common.receipts.model import (
    ReceiptBody,
    ReceiptPredicate,
    ReceiptStatement,
    Subject,
    default_subjects,
)
from mc_common.signing.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope, sign_envelope
from mc_common.signing.keys import Signer

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ChainLink:
    """A position in a tenant's receipt chain: which tenant, which sequence, which digest."""

    tenant: str
    sequence: int
    digest: str

    def __post_init__(self) -> None:
        if not self.tenant:
            raise ChainLinkError("chain link tenant must be non-empty")
        if self.sequence < 1:
            raise ChainLinkError(f"chain link sequence must be >= 1, got {self.sequence}")
        if not _SHA256_HEX.fullmatch(self.digest):
            raise ChainLinkError("chain link digest must be 64 lowercase hex characters")

    @classmethod
    def of(cls, statement: ReceiptStatement) -> ChainLink:
        """The link a statement occupies (its digest is computed from its canonical bytes)."""
        predicate = statement.predicate
        return cls(tenant=predicate.tenant, sequence=predicate.sequence, digest=statement.digest())


@dataclass(frozen=True, slots=True)
class SignedReceipt:
    """A signed receipt: the statement, its DSSE envelope, and its chain link."""

    statement: ReceiptStatement
    envelope: Envelope
    link: ChainLink

    @property
    def digest(self) -> str:
        """Hex SHA-256 of the canonical statement bytes (= of the DSSE payload)."""
        return self.link.digest


def build_receipt(
    body: ReceiptBody,
    previous: ChainLink | None,
    *,
    subjects: Sequence[Subject] | None = None,
) -> ReceiptStatement:
    """Place ``body`` after ``previous`` in its tenant's chain (``None`` = the first receipt).

    Raises ``ChainLinkError`` if ``previous`` belongs to another tenant. ``subjects`` defaults
    to the package and every step output (see ``default_subjects``).
    """
    if previous is None:
        sequence, previous_digest = 1, ""
    else:
        if previous.tenant != body.tenant:
            raise ChainLinkError(
                f"previous receipt belongs to tenant {previous.tenant!r}, not {body.tenant!r}"
            )
        sequence, previous_digest = previous.sequence + 1, previous.digest
    # Only the body's own fields: ``body`` may itself be a predicate being re-chained.
    fields = {name: getattr(body, name) for name in ReceiptBody.model_fields}
    predicate = ReceiptPredicate(**fields, sequence=sequence, previous_digest=previous_digest)
    chosen = list(subjects) if subjects is not None else default_subjects(body)
    return ReceiptStatement(subject=chosen, predicate=predicate)


def sign_receipt(statement: ReceiptStatement, signer: Signer) -> SignedReceipt:
    """Sign the canonical statement bytes as a DSSE envelope of type in-toto."""
    payload = statement.canonical_bytes()
    envelope = sign_envelope(payload, IN_TOTO_PAYLOAD_TYPE, signer)
    predicate = statement.predicate
    link = ChainLink(
        tenant=predicate.tenant, sequence=predicate.sequence, digest=sha256_hex(payload)
    )
    return SignedReceipt(statement=statement, envelope=envelope, link=link)


def issue_receipt(body: ReceiptBody, previous: ChainLink | None, signer: Signer) -> SignedReceipt:
    """``build_receipt`` then ``sign_receipt``: the one call a recording service needs."""
    return sign_receipt(build_receipt(body, previous), signer)
