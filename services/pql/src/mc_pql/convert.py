"""Translation between `mc.pql.v1` protobuf messages and the provenance domain."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError

from mc.pql.v1 import provenance_pb2 as pb
from mc_common.errors import FieldViolation, InvalidArgument
from mc_common.receipts import (
    Cost,
    PackageRef,
    PolicyDecision,
    ReceiptBody,
    ReceiptStatement,
    Step,
    StepOutput,
    Subject,
    Timing,
    rfc3339_sort_key,
    utc_timestamp,
)
from mc_pql.models import DecisionRecord, ExecutionRecord, SigningKeyRecord, Verification
from mc_pql.provenance import ContentSubmission, StoredReceipt, now_utc


def _dt(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def _opt_dt(message: object, name: str) -> datetime | None:
    return _dt(getattr(message, name)) if message.HasField(name) else None  # type: ignore[attr-defined]


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    out = Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


def _ts_from_text(value: str) -> Timestamp:
    moment, nanos = rfc3339_sort_key(value)  # cached parse of the receipt's own format
    return Timestamp(seconds=int(moment.timestamp()), nanos=nanos)


# pydantic field locations of ReceiptBody -> the request fields they came from.
_LOCATION_RENAMES = {"timing": ""}


def _violations(prefix: str, exc: ValidationError) -> list[FieldViolation]:
    out = []
    for err in exc.errors():
        parts = [_LOCATION_RENAMES.get(str(p), p) for p in err.get("loc", ())]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts if p != "")
        out.append(FieldViolation(f"{prefix}{path}".replace("..", "."), err["msg"]))
    return out


def content_to_submission(
    tenant: str, content: pb.ReceiptContent, prefix: str
) -> ContentSubmission:
    """Build the receipt body the service will sign; model errors become field violations."""
    try:
        body = ReceiptBody(
            tenant=tenant,
            execution_id=content.execution_id,
            package=PackageRef(
                name=content.package.name,
                version=content.package.version,
                digest=content.package.digest,
            ),
            steps=[
                Step(
                    name=s.name,
                    status=s.status,  # type: ignore[arg-type]
                    started_at=utc_timestamp(_dt(s.started_at)),
                    finished_at=utc_timestamp(_dt(s.finished_at)),
                    outputs=[StepOutput(name=o.name, sha256=o.sha256) for o in s.outputs],
                )
                for s in content.steps
            ],
            policy_decisions=[
                PolicyDecision(
                    decision_id=d.decision_id,
                    policy=d.policy,
                    rule=d.rule,
                    allow=d.allow,
                    reason=d.reason,
                )
                for d in content.policy_decisions
            ],
            cost=Cost(currency=content.cost.currency, amount_micros=content.cost.amount_micros),
            timing=Timing(
                started_at=utc_timestamp(_dt(content.started_at)),
                finished_at=utc_timestamp(_dt(content.finished_at)),
            ),
            region=content.region,
            recorded_at=utc_timestamp(now_utc()),
        )
        subjects = tuple(
            Subject(name=s.name, digest={"sha256": s.sha256}) for s in content.subjects
        )
    except ValidationError as exc:
        violations = _violations(prefix, exc)
        raise InvalidArgument(
            "invalid receipt content: "
            + "; ".join(f"{v.field}: {v.description}" for v in violations),
            violations,
        ) from exc
    return ContentSubmission(body, subjects)


def statement_to_content(statement: ReceiptStatement) -> pb.ReceiptContent:
    p = statement.predicate
    return pb.ReceiptContent(
        execution_id=p.execution_id,
        package=pb.PackageRef(
            name=p.package.name, version=p.package.version, digest=p.package.digest
        ),
        subjects=[
            pb.Subject(name=s.name, sha256=s.digest.get("sha256", "")) for s in statement.subject
        ],
        steps=[
            pb.Step(
                name=s.name,
                status=s.status,
                started_at=_ts_from_text(s.started_at),
                finished_at=_ts_from_text(s.finished_at),
                outputs=[pb.StepOutput(name=o.name, sha256=o.sha256) for o in s.outputs],
            )
            for s in p.steps
        ],
        policy_decisions=[
            pb.DecisionRef(
                decision_id=d.decision_id,
                policy=d.policy,
                rule=d.rule,
                allow=d.allow,
                reason=d.reason,
            )
            for d in p.policy_decisions
        ],
        cost=pb.Cost(currency=p.cost.currency, amount_micros=p.cost.amount_micros),
        started_at=_ts_from_text(p.timing.started_at),
        finished_at=_ts_from_text(p.timing.finished_at),
        region=p.region,
    )


def verification_to_proto(verification: Verification) -> pb.VerificationStatus:
    return pb.VerificationStatus(
        valid=verification.valid,
        failures=[
            pb.VerificationFailure(code=f.code, message=f.message, sequence=f.sequence)
            for f in verification.failures
        ],
    )


def receipt_to_proto(stored: StoredReceipt) -> pb.Receipt:
    """The receipt as served; content only when it verified, so nothing invalid looks valid."""
    row = stored.row
    out = pb.Receipt(
        digest=row.digest,
        tenant=row.tenant,
        sequence=row.sequence,
        previous_digest=row.previous_digest,
        envelope=row.envelope,
        signer_key_id=row.signer_key_id,
        client_envelope=row.client_envelope or b"",
        client_key_id=row.client_key_id or "",
        recorded_at=_ts(row.recorded_at),
        verification=verification_to_proto(stored.verification),
    )
    if stored.statement is not None:
        out.content.CopyFrom(statement_to_content(stored.statement))
    return out


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
