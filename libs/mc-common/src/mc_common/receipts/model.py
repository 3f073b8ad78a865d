"""Typed, strict models of an MC receipt: an in-toto Statement v1 whose predicate is the MC
receipt predicate (``https://maestro-conductor.dev/receipt/v1``).

Money is integer micro-units (1 USD = 1_000_000) plus an ISO 4217 currency code, timestamps
are RFC 3339 UTC strings ending in ``Z``, and digests are lowercase hex SHA-256, so the JSON
never needs floats and has exactly one canonical form.
"""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from mc_common.receipts.canonical import MAX_SAFE_INTEGER, canonicalize, sha256_hex

IN_TOTO_STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
RECEIPT_PREDICATE_TYPE: Final = "https://maestro-conductor.dev/receipt/v1"

_SHA256_HEX = r"^[0-9a-f]{64}$"
_RFC3339_UTC = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z$", re.ASCII
)


@functools.lru_cache(maxsize=8192)  # the same instants recur across a receipt's models
def rfc3339_sort_key(value: str) -> tuple[datetime, int]:
    """Parse an RFC 3339 UTC ``...Z`` timestamp into a comparable (second, nanosecond) key."""
    match = _RFC3339_UTC.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not an RFC 3339 UTC timestamp like 2025-01-31T12:00:00Z")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = match.group(7) or ""
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid date/time: {exc}") from exc
    return moment, int(fraction.ljust(9, "0") or "0")


def utc_timestamp(moment: datetime) -> str:
    """Format an aware datetime as the RFC 3339 UTC string receipts use (microseconds if any)."""
    if moment.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}"
    return text + "Z"


@functools.lru_cache(maxsize=4096)  # receipts recorded together share their minutes
def _utc_minute(minutes: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(minutes * 60))


_TWO_DIGITS = [f"{n:02d}" for n in range(60)]


def utc_timestamp_at(seconds: int, microseconds: int = 0) -> str:
    """``utc_timestamp`` of the instant ``seconds`` + ``microseconds`` after the Unix epoch,
    without making a datetime (years 1 to 9999, like datetime; ``0 <= microseconds < 10**6``)."""
    minutes, second = divmod(seconds, 60)
    text = _utc_minute(minutes) + _TWO_DIGITS[second]
    return f"{text}.{microseconds:06d}Z" if microseconds else f"{text}Z"


def _check_rfc3339(value: str) -> str:
    rfc3339_sort_key(value)
    return value


def _check_order(started_at: str, finished_at: str, what: str) -> None:
    if rfc3339_sort_key(finished_at) < rfc3339_sort_key(started_at):
        raise ValueError(f"{what}: finished_at {finished_at} is before started_at {started_at}")


Sha256Hex = Annotated[str, StringConstraints(pattern=_SHA256_HEX)]
"""Lowercase hex SHA-256 (64 characters)."""
Rfc3339Utc = Annotated[str, AfterValidator(_check_rfc3339)]
"""RFC 3339 timestamp in UTC with a ``Z`` suffix, e.g. ``2025-01-31T12:00:00.250Z``."""
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
StepStatus = Literal["succeeded", "failed", "skipped", "cancelled"]


class _StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class PackageRef(_StrictModel):
    """The workflow package that ran: name, version and hex SHA-256 of its content."""

    name: NonEmptyStr
    version: NonEmptyStr
    digest: Sha256Hex


class StepOutput(_StrictModel):
    """A named output a step produced, by its hex SHA-256."""

    name: NonEmptyStr
    sha256: Sha256Hex


class Step(_StrictModel):
    """One workflow step and its outcome."""

    name: NonEmptyStr
    status: StepStatus
    started_at: Rfc3339Utc
    finished_at: Rfc3339Utc
    outputs: list[StepOutput] = Field(default_factory=list)

    @model_validator(mode="after")
    def _finished_after_started(self) -> Step:
        _check_order(self.started_at, self.finished_at, f"step {self.name}")
        return self


class PolicyDecision(_StrictModel):
    """A policy decision taken during the execution (``policy`` names the bundle@version)."""

    decision_id: NonEmptyStr
    policy: NonEmptyStr
    rule: NonEmptyStr
    allow: bool
    reason: str


class Cost(_StrictModel):
    """Cost as integer micro-units of an ISO 4217 currency (12.5 USD = 12_500_000 USD micros)."""

    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
    amount_micros: Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]


class Timing(_StrictModel):
    """Wall-clock span of the whole execution."""

    started_at: Rfc3339Utc
    finished_at: Rfc3339Utc

    @model_validator(mode="after")
    def _finished_after_started(self) -> Timing:
        _check_order(self.started_at, self.finished_at, "timing")
        return self


class ReceiptBody(_StrictModel):
    """Everything a receipt records about one execution, before it is placed in the chain."""

    tenant: NonEmptyStr
    execution_id: NonEmptyStr
    package: PackageRef
    steps: list[Step]
    policy_decisions: list[PolicyDecision]
    cost: Cost
    timing: Timing
    region: NonEmptyStr
    recorded_at: Rfc3339Utc


class ReceiptPredicate(ReceiptBody):
    """The MC receipt predicate: the body plus its place in the tenant's hash chain.

    ``sequence`` starts at 1 per tenant; ``previous_digest`` is the hex SHA-256 of the
    predecessor's canonical statement bytes, or "" for sequence 1.
    """

    sequence: Annotated[int, Field(ge=1, le=MAX_SAFE_INTEGER)]
    previous_digest: Annotated[str, StringConstraints(pattern=r"^(?:[0-9a-f]{64})?$")]


class Subject(_StrictModel):
    """An in-toto subject: a name and a digest set that must include ``sha256``."""

    name: NonEmptyStr
    digest: dict[str, Annotated[str, StringConstraints(pattern=r"^[0-9a-f]+$")]]

    @model_validator(mode="after")
    def _has_sha256(self) -> Subject:
        if not re.fullmatch(_SHA256_HEX, self.digest.get("sha256", "")):
            raise ValueError(f"subject {self.name}: digest must contain a hex sha256")
        return self


class ReceiptStatement(_StrictModel):
    """An in-toto Statement v1 carrying an MC receipt predicate."""

    statement_type: Literal["https://in-toto.io/Statement/v1"] = Field(
        default=IN_TOTO_STATEMENT_TYPE, alias="_type"
    )
    subject: list[Subject] = Field(min_length=1)
    predicate_type: Literal["https://maestro-conductor.dev/receipt/v1"] = Field(
        default=RECEIPT_PREDICATE_TYPE, alias="predicateType"
    )
    predicate: ReceiptPredicate

    def to_json_obj(self) -> dict[str, object]:
        """The statement as a JSON object (aliases applied, every field present)."""
        return self.model_dump(mode="json", by_alias=True)

    def canonical_bytes(self) -> bytes:
        """RFC 8785 canonical bytes: the DSSE payload and the input of ``digest``."""
        return canonicalize(self.to_json_obj())

    def digest(self) -> str:
        """Hex SHA-256 of ``canonical_bytes()``: the receipt's identity in the hash chain."""
        return sha256_hex(self.canonical_bytes())


def default_subjects(body: ReceiptBody) -> list[Subject]:
    """Subjects of a receipt: the package first, then every step output, in order."""
    subjects = [
        Subject(
            name=f"{body.package.name}@{body.package.version}",
            digest={"sha256": body.package.digest},
        )
    ]
    for step in body.steps:
        subjects.extend(
            Subject(name=f"{step.name}/{output.name}", digest={"sha256": output.sha256})
            for output in step.outputs
        )
    return subjects
