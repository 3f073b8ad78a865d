"""The proto-declared content rules, applied to content that did not arrive as a request message.

A caller-signed statement and a decision event carry the same content as `ReceiptContent` and
`PolicyDecision`; converting them to those messages and validating with `mc_common.validation`
means the bounds live in one place, the protos, whatever the transport (ADR 0030).
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from mc.pql.v1 import provenance_pb2 as pb
from mc_common.errors import FieldViolation, InvalidArgument
from mc_common.receipts import ReceiptBody, Subject, rfc3339_sort_key
from mc_common.validation import field_violations
from mc_pql.models import DecisionRecord


def timestamp_of(value: str) -> Timestamp:
    """The Timestamp of a receipt's RFC 3339 text (already checked by the receipt model)."""
    moment, nanos = rfc3339_sort_key(value)  # cached parse of the receipt's own format
    return Timestamp(seconds=int(moment.timestamp()), nanos=nanos)


def body_to_content(body: ReceiptBody, subjects: Sequence[Subject]) -> pb.ReceiptContent:
    """`body` and its subjects as the `ReceiptContent` message that carries them."""
    return pb.ReceiptContent(
        execution_id=body.execution_id,
        package=pb.PackageRef(
            name=body.package.name, version=body.package.version, digest=body.package.digest
        ),
        subjects=[pb.Subject(name=s.name, sha256=s.digest.get("sha256", "")) for s in subjects],
        steps=[
            pb.Step(
                name=s.name,
                status=s.status,
                started_at=timestamp_of(s.started_at),
                finished_at=timestamp_of(s.finished_at),
                outputs=[pb.StepOutput(name=o.name, sha256=o.sha256) for o in s.outputs],
            )
            for s in body.steps
        ],
        policy_decisions=[
            pb.DecisionRef(
                decision_id=d.decision_id,
                policy=d.policy,
                rule=d.rule,
                allow=d.allow,
                reason=d.reason,
            )
            for d in body.policy_decisions
        ],
        cost=pb.Cost(currency=body.cost.currency, amount_micros=body.cost.amount_micros),
        started_at=timestamp_of(body.timing.started_at),
        finished_at=timestamp_of(body.timing.finished_at),
        region=body.region,
    )


def decision_to_message(record: DecisionRecord) -> pb.PolicyDecision:
    out = pb.PolicyDecision(
        decision_id=record.decision_id,
        execution_id=record.execution_id,
        policy=record.policy,
        bundle_digest=record.bundle_digest,
        rule=record.rule,
        allow=record.allow,
        reason=record.reason,
        remediation=record.remediation,
    )
    out.decided_at.FromDatetime(record.decided_at)
    return out


def check(message: Message, prefix: str) -> None:
    """Raise InvalidArgument, paths under `prefix`, when `message` breaks its proto rules."""
    violations = field_violations(message)
    if violations:
        named = [FieldViolation(f"{prefix}.{v.field}", v.description) for v in violations]
        summary = "; ".join(f"{v.field}: {v.description}" for v in named[:5])
        raise InvalidArgument(f"invalid {message.DESCRIPTOR.name}: {summary}", named)


def check_body(body: ReceiptBody, subjects: Sequence[Subject], prefix: str) -> None:
    """The `ReceiptContent` rules, for a body that arrived some other way (caller-signed)."""
    check(body_to_content(body, subjects), prefix)
