"""Receipt content signed by a client: an in-toto statement whose predicate is a receipt body.

A client cannot know its chain position, so what it signs carries no sequence or previous
digest: the predicate type is `CLIENT_PREDICATE_TYPE` and the predicate is an MC `ReceiptBody`.
The service verifies it against the tenant's registered keys, then records a chained receipt
that names the client statement's digest as the subject `CLIENT_SUBJECT`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from pydantic import ValidationError

from mc_common.receipts import (
    IN_TOTO_STATEMENT_TYPE,
    ReceiptBody,
    Subject,
    canonicalize,
    default_subjects,
    parse_json_strict,
)
from mc_common.receipts.errors import ReceiptError
from mc_common.signing import IN_TOTO_PAYLOAD_TYPE, Envelope, Signer, sign_envelope

CLIENT_PREDICATE_TYPE: Final = "https://maestro-conductor.dev/receipt-body/v1"
CLIENT_SUBJECT: Final = "mc:client-statement"


class ClientStatementError(ValueError):
    """A client statement is not a well-formed MC receipt-body statement."""


def client_statement_bytes(body: ReceiptBody, subjects: Sequence[Subject] | None = None) -> bytes:
    """The canonical statement a client signs for `body`."""
    chosen = list(subjects) if subjects else default_subjects(body)
    return canonicalize(
        {
            "_type": IN_TOTO_STATEMENT_TYPE,
            "subject": [s.model_dump(mode="json") for s in chosen],
            "predicateType": CLIENT_PREDICATE_TYPE,
            "predicate": body.model_dump(mode="json"),
        }
    )


def sign_client_statement(
    body: ReceiptBody, signer: Signer, subjects: Sequence[Subject] | None = None
) -> Envelope:
    """Sign `body` as a client would (used by the CLI, SDKs and tests)."""
    return sign_envelope(client_statement_bytes(body, subjects), IN_TOTO_PAYLOAD_TYPE, signer)


def parse_client_statement(payload: bytes) -> tuple[ReceiptBody, list[Subject]]:
    """Parse a verified envelope's payload into the body and subjects it attests."""
    try:
        obj = parse_json_strict(payload)
    except ReceiptError as exc:
        raise ClientStatementError(f"payload is not strict JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ClientStatementError("payload must be a JSON object")
    if obj.get("_type") != IN_TOTO_STATEMENT_TYPE:
        raise ClientStatementError(f"_type must be {IN_TOTO_STATEMENT_TYPE!r}")
    if obj.get("predicateType") != CLIENT_PREDICATE_TYPE:
        raise ClientStatementError(f"predicateType must be {CLIENT_PREDICATE_TYPE!r}")
    extra = set(obj) - {"_type", "subject", "predicateType", "predicate"}
    if extra:
        raise ClientStatementError(f"unexpected statement fields: {sorted(extra)}")
    try:
        body = ReceiptBody.model_validate(obj.get("predicate"))
        raw_subjects = obj.get("subject")
        if not isinstance(raw_subjects, list) or not raw_subjects:
            raise ClientStatementError("subject must be a non-empty list")
        subjects = [Subject.model_validate(s) for s in raw_subjects]
    except ValidationError as exc:
        raise ClientStatementError(f"statement does not match the schema: {exc}") from exc
    return body, subjects
