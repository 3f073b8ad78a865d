"""Proto <-> domain conversion for `mc.policy.v1.PolicyService`."""

from __future__ import annotations

from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from mc.policy.v1 import policy_service_pb2 as svc
from mc_common.errors import InvalidArgument
from mc_edge_policy.edge_policy import ExplainedDecision
from mc_edge_policy.pdp import Decision, FiredRule, PdpState, PdpStatus

MAX_INPUT_BYTES = 256 * 1024

_STATES = {
    PdpState.SERVING: svc.POLICY_STATE_SERVING,
    PdpState.STALE: svc.POLICY_STATE_STALE,
    PdpState.EMPTY: svc.POLICY_STATE_EMPTY,
}


def input_from_proto(value: struct_pb2.Struct, field: str = "input") -> dict[str, Any]:
    """The input document of a request; bounded in size."""
    if value.ByteSize() > MAX_INPUT_BYTES:
        raise InvalidArgument.field(field, f"input is larger than {MAX_INPUT_BYTES} bytes")
    document = json_format.MessageToDict(value)
    assert isinstance(document, dict)
    return document


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def decision_to_proto(decision: Decision) -> svc.Decision:
    decided_at = timestamp_pb2.Timestamp()
    decided_at.FromDatetime(decision.decided_at)
    out = svc.Decision(
        decision_id=decision.decision_id,
        policy=decision.policy,
        allow=decision.allow,
        rule=decision.rule,
        reason=decision.reason,
        remediation=decision.remediation,
        bundle_digest=decision.bundle_digest,
        bundle_version=decision.bundle_version,
        fail_closed=decision.fail_closed,
        decided_at=decided_at,
    )
    if decision.retry_after_ms is not None:
        out.retry_after.CopyFrom(
            duration_pb2.Duration(
                seconds=decision.retry_after_ms // 1000,
                nanos=(decision.retry_after_ms % 1000) * 1_000_000,
            )
        )
    if decision.throttle is not None:
        json_format.ParseDict(decision.throttle, out.throttle)
    return out


def fired_to_proto(rule: FiredRule) -> svc.FiredRule:
    return svc.FiredRule(
        rule=rule.rule,
        reason=rule.reason,
        title=rule.title,
        remediation=rule.remediation,
        deprecated=rule.deprecated,
        details=_struct(rule.details),
    )


def explanation_input_to_proto(value: dict[str, Any]) -> struct_pb2.Struct:
    return _struct(value)


def explained_to_proto(explained: ExplainedDecision) -> svc.ExplainedDecision:
    recorded = explained.recorded
    out = svc.ExplainedDecision(
        decision_id=recorded.decision_id,
        policy=recorded.policy,
        rule=recorded.rule,
        allow=recorded.allow,
        reason=recorded.reason,
        remediation=recorded.remediation,
        bundle_digest=recorded.bundle_digest,
        title=explained.title,
        deprecated=explained.deprecated,
        from_active_bundle=explained.from_active_bundle,
    )
    out.decided_at.FromDatetime(recorded.decided_at)
    return out


def status_to_proto(status: PdpStatus) -> svc.GetPolicyStatusResponse:
    out = svc.GetPolicyStatusResponse(
        state=_STATES[status.state],
        reason=status.reason,
        bundle_digest=status.bundle_digest,
        bundle_version=status.bundle_version,
    )
    if status.fresh_until is not None:
        out.fresh_until.FromDatetime(status.fresh_until)
    return out
