"""Pure verification of single receipts and of per-tenant receipt chains.

Both functions take what a service reads from storage (envelopes or their JSON) plus a
``KeyRing`` and return a report listing every failed check with a stable code and a human
message; they never raise for a bad receipt and never touch a database.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import ValidationError

from mc_common.receipts.canonical import canonicalize, parse_json_strict, sha256_hex
from mc_common.receipts.chain import ChainLink
from mc_common.receipts.errors import (
    CanonicalizationError,
    JsonFormatError,
    ReceiptVerificationError,
)
from mc_common.receipts.model import (
    IN_TOTO_STATEMENT_TYPE,
    RECEIPT_PREDICATE_TYPE,
    ReceiptStatement,
)
from mc_common.signing.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope, verify_envelope_detailed
from mc_common.signing.errors import (
    EnvelopeFormatError,
    InvalidSignatureError,
    NoSignaturesError,
    SignatureError,
    UnknownKeyError,
)
from mc_common.signing.keyring import KeyRing


class ReceiptCheck(StrEnum):
    """Checks a single receipt can fail."""

    ENVELOPE_MALFORMED = "ENVELOPE_MALFORMED"
    NO_SIGNATURES = "NO_SIGNATURES"
    UNKNOWN_KEY = "UNKNOWN_KEY"
    SIGNATURE_INVALID = "SIGNATURE_INVALID"
    WRONG_PAYLOAD_TYPE = "WRONG_PAYLOAD_TYPE"
    DIGEST_MISMATCH = "DIGEST_MISMATCH"
    PAYLOAD_MALFORMED = "PAYLOAD_MALFORMED"
    PAYLOAD_NOT_CANONICAL = "PAYLOAD_NOT_CANONICAL"
    WRONG_STATEMENT_TYPE = "WRONG_STATEMENT_TYPE"
    WRONG_PREDICATE_TYPE = "WRONG_PREDICATE_TYPE"
    TENANT_MISMATCH = "TENANT_MISMATCH"


@dataclass(frozen=True, slots=True)
class CheckFailure:
    """One failed check: its code and a human-readable explanation."""

    code: ReceiptCheck
    message: str


@dataclass(frozen=True, slots=True)
class VerificationReport:
    """The outcome of ``verify_receipt``.

    ``digest`` is the hex SHA-256 of the DSSE payload (None if the envelope did not parse);
    ``parsed_statement`` is whatever statement could be parsed, *even if checks failed*, and
    must not be trusted unless ``ok`` (use ``statement`` or ``raise_if_invalid``).
    """

    failures: tuple[CheckFailure, ...]
    digest: str | None
    parsed_statement: ReceiptStatement | None
    key_ids: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.failures

    @property
    def codes(self) -> frozenset[ReceiptCheck]:
        """The set of failed check codes."""
        return frozenset(failure.code for failure in self.failures)

    @property
    def statement(self) -> ReceiptStatement | None:
        """The verified statement, or None if any check failed."""
        return self.parsed_statement if self.ok else None

    def raise_if_invalid(self) -> ReceiptStatement:
        """Return the verified statement or raise ``ReceiptVerificationError``."""
        if self.ok and self.parsed_statement is not None:
            return self.parsed_statement
        message = "; ".join(f"{f.code}: {f.message}" for f in self.failures)
        codes = tuple(str(f.code) for f in self.failures)
        raise ReceiptVerificationError(
            f"receipt failed verification: {message}", code=codes[0], failed_codes=codes
        )


def verify_receipt(
    envelope: Envelope | bytes | str,
    keyring: KeyRing,
    expected_tenant: str | None = None,
    expected_digest: str | None = None,
) -> VerificationReport:
    """Check a receipt envelope (or its JSON) and report every failed check.

    Checks: envelope well-formed, a registered key's signature verifies, payloadType is
    in-toto, payload digest equals ``expected_digest`` (when given), payload is strict JSON in
    RFC 8785 canonical form, it is an in-toto Statement v1 with the MC receipt predicate
    type and a valid predicate, and its tenant equals ``expected_tenant`` (when given).
    """
    failures: list[CheckFailure] = []

    def fail(code: ReceiptCheck, message: str) -> None:
        failures.append(CheckFailure(code, message))

    if not isinstance(envelope, Envelope):
        try:
            envelope = Envelope.from_json(envelope)
        except EnvelopeFormatError as exc:
            fail(ReceiptCheck.ENVELOPE_MALFORMED, str(exc))
            return VerificationReport(tuple(failures), None, None, ())

    key_ids: tuple[str, ...] = ()
    try:
        key_ids = verify_envelope_detailed(envelope, keyring).key_ids
    except NoSignaturesError as exc:
        fail(ReceiptCheck.NO_SIGNATURES, str(exc))
    except UnknownKeyError as exc:
        fail(ReceiptCheck.UNKNOWN_KEY, str(exc))
    except InvalidSignatureError as exc:
        fail(ReceiptCheck.SIGNATURE_INVALID, str(exc))
    except SignatureError as exc:  # pragma: no cover - no other error is raised today
        fail(ReceiptCheck.SIGNATURE_INVALID, str(exc))

    if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE:
        fail(
            ReceiptCheck.WRONG_PAYLOAD_TYPE,
            f"payloadType is {envelope.payload_type!r}, expected {IN_TOTO_PAYLOAD_TYPE!r}",
        )

    payload = envelope.payload
    digest = sha256_hex(payload)
    if expected_digest is not None and digest != expected_digest.lower():
        fail(
            ReceiptCheck.DIGEST_MISMATCH, f"payload digest is {digest}, expected {expected_digest}"
        )

    statement = _check_payload(payload, fail)
    if (
        statement is not None
        and expected_tenant is not None
        and statement.predicate.tenant != expected_tenant
    ):
        fail(
            ReceiptCheck.TENANT_MISMATCH,
            f"receipt belongs to tenant {statement.predicate.tenant!r}, "
            f"expected {expected_tenant!r}",
        )
    return VerificationReport(tuple(failures), digest, statement, key_ids)


def _check_payload(
    payload: bytes, fail: Callable[[ReceiptCheck, str], None]
) -> ReceiptStatement | None:
    try:
        value = parse_json_strict(payload)
    except (JsonFormatError, CanonicalizationError) as exc:
        fail(ReceiptCheck.PAYLOAD_MALFORMED, f"payload is not strict JSON: {exc}")
        return None
    try:
        canonical = canonicalize(value)
    except CanonicalizationError as exc:
        fail(ReceiptCheck.PAYLOAD_MALFORMED, f"payload cannot be canonicalized: {exc}")
        return None
    if canonical != payload:
        fail(ReceiptCheck.PAYLOAD_NOT_CANONICAL, "payload is not RFC 8785 canonical JSON")
    if not isinstance(value, dict):
        fail(ReceiptCheck.PAYLOAD_MALFORMED, "payload is not a JSON object")
        return None
    type_ok = value.get("_type") == IN_TOTO_STATEMENT_TYPE
    if not type_ok:
        fail(
            ReceiptCheck.WRONG_STATEMENT_TYPE,
            f"_type is {value.get('_type')!r}, expected {IN_TOTO_STATEMENT_TYPE!r}",
        )
    predicate_ok = value.get("predicateType") == RECEIPT_PREDICATE_TYPE
    if not predicate_ok:
        fail(
            ReceiptCheck.WRONG_PREDICATE_TYPE,
            f"predicateType is {value.get('predicateType')!r}, expected {RECEIPT_PREDICATE_TYPE!r}",
        )
    if not (type_ok and predicate_ok):
        return None
    try:
        return ReceiptStatement.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        fail(ReceiptCheck.PAYLOAD_MALFORMED, f"statement does not match the schema: {problems}")
        return None


class ChainCheck(StrEnum):
    """Problems ``verify_chain`` can find."""

    RECEIPT_INVALID = "RECEIPT_INVALID"
    CHAIN_START_MISSING = "CHAIN_START_MISSING"
    GENESIS_PREVIOUS_NOT_EMPTY = "GENESIS_PREVIOUS_NOT_EMPTY"
    SEQUENCE_GAP = "SEQUENCE_GAP"
    SEQUENCE_DUPLICATE = "SEQUENCE_DUPLICATE"
    SEQUENCE_OUT_OF_ORDER = "SEQUENCE_OUT_OF_ORDER"
    PREVIOUS_DIGEST_MISMATCH = "PREVIOUS_DIGEST_MISMATCH"


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """One problem in a chain.

    ``index`` is the position in the input where it was detected; ``sequence`` is the
    sequence number from which the chain stops being trustworthy because of it (for a gap,
    the first missing number). ``receipt_failures`` details a ``RECEIPT_INVALID``.
    """

    code: ChainCheck
    index: int
    sequence: int | None
    message: str
    receipt_failures: tuple[CheckFailure, ...] = ()


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of ``verify_chain``.

    ``first_broken_sequence`` is the lowest sequence number affected by any problem;
    ``verified_through`` is the last link of the longest fully verified prefix (the
    ``after`` anchor, or None, when not even the first receipt verifies).
    """

    problems: tuple[ChainProblem, ...]
    receipts: tuple[VerificationReport, ...]
    first_broken_sequence: int | None
    verified_through: ChainLink | None

    @property
    def ok(self) -> bool:
        """True when every receipt verifies and every link is intact."""
        return not self.problems

    @property
    def codes(self) -> frozenset[ChainCheck]:
        """The set of problem codes found."""
        return frozenset(problem.code for problem in self.problems)


def verify_chain(
    receipts: Sequence[Envelope | bytes | str],
    keyring: KeyRing,
    *,
    expected_tenant: str | None = None,
    after: ChainLink | None = None,
) -> ChainReport:
    """Verify a tenant's receipts, given in sequence order, and every link between them.

    Each receipt is checked with ``verify_receipt`` (tenant = ``expected_tenant``, else the
    ``after`` anchor's, else the first receipt's). Without ``after`` the chain must start at
    sequence 1 with an empty ``previous_digest``; with ``after`` (a trusted link, such as the
    last one a previous run verified) the first receipt must directly follow it. Every
    problem is reported, not just the first.
    """
    tenant = expected_tenant if expected_tenant is not None else (after.tenant if after else None)
    reports: list[VerificationReport] = []
    for item in receipts:
        report = verify_receipt(item, keyring, expected_tenant=tenant)
        if tenant is None and report.parsed_statement is not None:
            tenant = report.parsed_statement.predicate.tenant
        reports.append(report)

    problems: list[ChainProblem] = []
    previous: tuple[int, str] | None = (after.sequence, after.digest) if after else None
    expected_next = after.sequence + 1 if after else 1
    for index, report in enumerate(reports):
        statement = report.parsed_statement
        sequence = statement.predicate.sequence if statement is not None else None
        if not report.ok:
            problems.append(
                ChainProblem(
                    ChainCheck.RECEIPT_INVALID,
                    index,
                    sequence if sequence is not None else expected_next,
                    f"receipt at position {index} failed: "
                    + ", ".join(str(code) for code in sorted(report.codes)),
                    report.failures,
                )
            )
        if statement is None or sequence is None or report.digest is None:
            previous = None
            expected_next += 1
            continue
        previous_digest = statement.predicate.previous_digest
        if index == 0 and after is None:
            problems.extend(_genesis_problems(sequence, previous_digest))
        elif previous is not None:
            problems.extend(_link_problems(index, previous, sequence, previous_digest))
        previous = (sequence, report.digest)
        expected_next = sequence + 1

    return ChainReport(
        problems=tuple(problems),
        receipts=tuple(reports),
        first_broken_sequence=min(
            (p.sequence for p in problems if p.sequence is not None), default=None
        ),
        verified_through=_verified_through(reports, problems, after),
    )


def _genesis_problems(sequence: int, previous_digest: str) -> list[ChainProblem]:
    if sequence != 1:
        return [
            ChainProblem(
                ChainCheck.CHAIN_START_MISSING,
                0,
                1,
                f"chain starts at sequence {sequence}; sequences 1..{sequence - 1} are missing",
            )
        ]
    if previous_digest:
        return [
            ChainProblem(
                ChainCheck.GENESIS_PREVIOUS_NOT_EMPTY,
                0,
                1,
                "first receipt (sequence 1) has a non-empty previous_digest",
            )
        ]
    return []


def _link_problems(
    index: int, previous: tuple[int, str], sequence: int, previous_digest: str
) -> list[ChainProblem]:
    prev_sequence, prev_digest = previous
    if sequence == prev_sequence:
        return [
            ChainProblem(
                ChainCheck.SEQUENCE_DUPLICATE,
                index,
                sequence,
                f"sequence {sequence} appears more than once",
            )
        ]
    if sequence < prev_sequence:
        return [
            ChainProblem(
                ChainCheck.SEQUENCE_OUT_OF_ORDER,
                index,
                prev_sequence + 1,
                f"sequence {sequence} follows sequence {prev_sequence}",
            )
        ]
    if sequence > prev_sequence + 1:
        missing = (
            str(prev_sequence + 1)
            if sequence == prev_sequence + 2
            else f"{prev_sequence + 1}..{sequence - 1}"
        )
        return [
            ChainProblem(
                ChainCheck.SEQUENCE_GAP,
                index,
                prev_sequence + 1,
                f"sequence {missing} missing between {prev_sequence} and {sequence}",
            )
        ]
    if previous_digest != prev_digest:
        return [
            ChainProblem(
                ChainCheck.PREVIOUS_DIGEST_MISMATCH,
                index,
                sequence,
                f"sequence {sequence} has previous_digest {previous_digest or '(empty)'}, "
                f"but sequence {prev_sequence} has digest {prev_digest}",
            )
        ]
    return []


def _verified_through(
    reports: Sequence[VerificationReport],
    problems: Sequence[ChainProblem],
    after: ChainLink | None,
) -> ChainLink | None:
    first_bad = min((p.index for p in problems), default=len(reports))
    if first_bad == 0:
        return after
    statement = reports[first_bad - 1].parsed_statement
    digest = reports[first_bad - 1].digest
    if statement is None or digest is None:  # pragma: no cover - prefix receipts all verified
        return after
    predicate = statement.predicate
    return ChainLink(tenant=predicate.tenant, sequence=predicate.sequence, digest=digest)
