"""Translation between `mc.pql.v1` protobuf messages and the provenance domain."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import TypeAdapter, ValidationError

from mc.pql.v1 import provenance_pb2 as pb
from mc.pql.v1 import provenance_service_pb2 as svc
from mc_common.errors import FieldViolation, InvalidArgument
from mc_common.receipts import (
    ReceiptBody,
    ReceiptStatement,
    Subject,
    utc_timestamp,
    utc_timestamp_at,
)
from mc_pql.models import (
    DecisionRecord,
    ExecutionRecord,
    RequestKey,
    SigningKeyRecord,
    StoredReceipt,
    Verification,
)
from mc_pql.provenance import ContentSubmission
from mc_pql.rules import body_to_content


def _dt(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def _opt_dt(message: object, name: str) -> datetime | None:
    return _dt(getattr(message, name)) if message.HasField(name) else None  # type: ignore[attr-defined]


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    since = value - _EPOCH  # timedelta arithmetic: cheaper than Timestamp.FromDatetime
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# pydantic field locations of ReceiptBody -> the request fields they came from.
_LOCATION_RENAMES = {"timing": ""}


def _violations(prefix: str, exc: ValidationError) -> list[FieldViolation]:
    out = []
    for err in exc.errors():
        parts = [_LOCATION_RENAMES.get(str(p), p) for p in err.get("loc", ())]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts if p != "")
        out.append(FieldViolation(f"{prefix}{path}".replace("..", "."), err["msg"]))
    return out


def request_key(request: svc.RecordReceiptRequest | svc.RecordReceiptsRequest) -> RequestKey | None:
    """The request's idempotency key and the digest of the request without it (None: no key).

    Keys belong on the batch: one on an item of a RecordReceiptsRequest is INVALID_ARGUMENT.
    """
    if isinstance(request, svc.RecordReceiptsRequest):
        for index, item in enumerate(request.receipts):
            if item.idempotency_key:
                raise InvalidArgument.field(
                    f"receipts[{index}].idempotency_key", "set the key on the batch"
                )
    if not request.idempotency_key:
        return None
    unkeyed: Message = type(request)()
    unkeyed.CopyFrom(request)  # type: ignore[arg-type]  # same type, but mypy cannot see it
    unkeyed.ClearField("idempotency_key")
    digest = hashlib.sha256(unkeyed.SerializeToString(deterministic=True)).hexdigest()
    return RequestKey(request.idempotency_key, digest)


def content_to_submission(
    tenant: str, content: pb.ReceiptContent, prefix: str
) -> ContentSubmission:
    """Build the receipt body the service will sign; model errors become field violations.

    The body is validated once, as a whole, from plain data (pydantic's core walks it in one
    call), so every broken rule is reported with its full path.
    """
    violations: list[FieldViolation] = []
    try:
        body = ReceiptBody.model_validate(_body_data(tenant, content))
    except ValidationError as exc:
        violations += _violations(prefix, exc)
    subjects: list[Subject] = []
    try:
        if content.subjects:
            subjects = _SUBJECTS.validate_python(
                [{"name": s.name, "digest": {"sha256": s.sha256}} for s in content.subjects]
            )
    except ValidationError as exc:
        violations += _violations(f"{prefix}.subjects", exc)
    if violations:
        raise InvalidArgument(
            "invalid receipt content: "
            + "; ".join(f"{v.field}: {v.description}" for v in violations),
            violations,
        )
    return ContentSubmission(body, tuple(subjects))


_SUBJECTS = TypeAdapter(list[Subject])


def _body_data(tenant: str, content: pb.ReceiptContent) -> dict[str, Any]:
    package, cost = content.package, content.cost
    return {
        "tenant": tenant,
        "execution_id": content.execution_id,
        "package": {"name": package.name, "version": package.version, "digest": package.digest},
        "steps": [
            {
                "name": s.name,
                "status": s.status,
                "started_at": receipt_time(s.started_at),
                "finished_at": receipt_time(s.finished_at),
                "outputs": [{"name": o.name, "sha256": o.sha256} for o in s.outputs],
            }
            for s in content.steps
        ],
        "policy_decisions": [
            {
                "decision_id": d.decision_id,
                "policy": d.policy,
                "rule": d.rule,
                "allow": d.allow,
                "reason": d.reason,
            }
            for d in content.policy_decisions
        ],
        "cost": {"currency": cost.currency, "amount_micros": cost.amount_micros},
        "timing": {
            "started_at": receipt_time(content.started_at),
            "finished_at": receipt_time(content.finished_at),
        },
        "region": content.region,
        "recorded_at": _now_text(),
    }


# Seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range `datetime` can hold.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def receipt_time(ts: Timestamp) -> str:
    """`utc_timestamp(ts.ToDatetime())` (microseconds, truncated) without making a datetime."""
    seconds, nanos = ts.seconds, ts.nanos
    if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
        return utc_timestamp(_dt(ts))  # out of range: fail (or not) exactly as before
    return utc_timestamp_at(seconds, nanos // 1000)


def _now_text() -> str:
    """`utc_timestamp(now_utc())`."""
    now = time.time_ns() // 1000
    return utc_timestamp_at(now // 1_000_000, now % 1_000_000)


def statement_to_content(statement: ReceiptStatement) -> pb.ReceiptContent:
    return body_to_content(statement.predicate, statement.subject)


def verification_to_proto(verification: Verification) -> pb.VerificationStatus:
    return pb.VerificationStatus(
        valid=verification.valid,
        failures=[
            pb.VerificationFailure(code=f.code, message=f.message, sequence=f.sequence)
            for f in verification.failures
        ],
    )


def receipt_to_proto(
    stored: StoredReceipt, request_content: pb.ReceiptContent | None = None
) -> pb.Receipt:
    """The receipt as served; content only when it verified, so nothing invalid looks valid.

    `request_content` is the content the receipt was just signed from, if it was: the served
    content is then made from it instead of from the statement, which costs half as much.
    """
    row = stored.row
    out = pb.Receipt(
        digest=row.digest,
        tenant=row.tenant,
        sequence=row.sequence,
        previous_digest=row.previous_digest,
        envelope=row.envelope,
        client_envelope=row.client_envelope or b"",
        verification=verification_to_proto(stored.verification),
        unverified=pb.ReceiptUnverified(
            stored_at=_ts(row.recorded_at),
            signer_key_id=row.signer_key_id,
            client_key_id=row.client_key_id or "",
        ),
    )
    if stored.statement is not None:
        # Verified: the key ids were checked against the signatures (`Provenance._verified`),
        # and the time is the signed one.
        out.signer_key_id = row.signer_key_id
        out.client_key_id = row.client_key_id or ""
        out.recorded_at.FromJsonString(stored.statement.predicate.recorded_at)
        if request_content is None:
            out.content.CopyFrom(statement_to_content(stored.statement))
        else:
            _signed_content(out.content, request_content, stored.statement)
    return out


def _signed_content(
    out: pb.ReceiptContent, request: pb.ReceiptContent, statement: ReceiptStatement
) -> None:
    """Set `out` to `statement_to_content(statement)`, `statement` being just signed from
    `request` by `content_to_submission`: every field is the request's (timestamps truncated to
    microseconds, as signed) except the subjects, which are the signed ones."""
    out.CopyFrom(request)
    out.DiscardUnknownFields()  # type: ignore[attr-defined]  # (missing from the stubs)
    for step in out.steps:
        step.started_at.nanos -= step.started_at.nanos % 1000
        step.finished_at.nanos -= step.finished_at.nanos % 1000
    out.started_at.nanos -= out.started_at.nanos % 1000
    out.finished_at.nanos -= out.finished_at.nanos % 1000
    del out.subjects[:]
    out.subjects.extend(
        pb.Subject(name=s.name, sha256=s.digest.get("sha256", "")) for s in statement.subject
    )


def execution_from_proto(message: pb.Execution) -> ExecutionRecord:
    return ExecutionRecord(
        execution_id=message.execution_id,
        package_name=message.package.name,
        package_version=message.package.version,
        package_digest=message.package.digest,
        region=message.region,
        status=message.status,
        started_at=_opt_dt(message, "started_at"),
        finished_at=_opt_dt(message, "finished_at"),
        labels=dict(message.labels),
    )


def execution_to_proto(record: ExecutionRecord) -> pb.Execution:
    return pb.Execution(
        execution_id=record.execution_id,
        tenant=record.tenant,
        package=pb.PackageRef(
            name=record.package_name, version=record.package_version, digest=record.package_digest
        ),
        region=record.region,
        status=record.status,
        started_at=_ts(record.started_at),
        finished_at=_ts(record.finished_at),
        labels=record.labels,
        recorded_at=_ts(record.recorded_at),
    )


def decision_from_proto(message: pb.PolicyDecision) -> DecisionRecord:
    return DecisionRecord(
        decision_id=message.decision_id,
        execution_id=message.execution_id,
        policy=message.policy,
        bundle_digest=message.bundle_digest,
        rule=message.rule,
        allow=message.allow,
        reason=message.reason,
        remediation=message.remediation,
        decided_at=_dt(message.decided_at),
    )


def decision_to_proto(record: DecisionRecord) -> pb.PolicyDecision:
    return pb.PolicyDecision(
        decision_id=record.decision_id,
        tenant=record.tenant,
        execution_id=record.execution_id,
        policy=record.policy,
        bundle_digest=record.bundle_digest,
        rule=record.rule,
        allow=record.allow,
        reason=record.reason,
        remediation=record.remediation,
        decided_at=_ts(record.decided_at),
        recorded_at=_ts(record.recorded_at),
    )


def key_to_proto(record: SigningKeyRecord) -> pb.SigningKey:
    return pb.SigningKey(
        key_id=record.key_id,
        tenant=record.tenant,
        public_key_pem=record.public_key_pem,
        registered_at=_ts(record.registered_at),
        revoked=record.revoked_at is not None,
    )
