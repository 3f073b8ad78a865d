"""Field-path attribution of protoc-gen-validate violations."""

from __future__ import annotations

import pytest

from mc.pql.v1 import provenance_pb2 as pb
from mc.pql.v1 import provenance_service_pb2 as svc
from mc_common.errors import InvalidArgument
from mc_common.validation import field_violations, validate_request

GOOD_SHA = "a" * 64


def test_valid_request_passes() -> None:
    validate_request(svc.ListExecutionsRequest(page_size=10))


def test_nested_violations_carry_full_paths() -> None:
    request = svc.RecordReceiptRequest(
        content=pb.ReceiptContent(
            execution_id="ok-1",
            package=pb.PackageRef(name="p", version="1", digest=GOOD_SHA),
            subjects=[pb.Subject(name="a", sha256=GOOD_SHA), pb.Subject(name="b", sha256="xyz")],
            cost=pb.Cost(currency="USD"),
            region="eu-west-1",
        )
    )
    request.content.started_at.GetCurrentTime()
    request.content.finished_at.GetCurrentTime()
    fields = [v.field for v in field_violations(request)]
    assert fields == ["content.subjects[1].sha256"]


def test_every_violation_is_reported() -> None:
    request = svc.RecordReceiptRequest(content=pb.ReceiptContent(execution_id="bad id"))
    fields = {v.field for v in field_violations(request)}
    assert {"content.execution_id", "content.package", "content.started_at"} <= fields


def test_required_oneof() -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_request(svc.RecordReceiptRequest())
    assert [v.field for v in err.value.violations] == ["receipt"]


def test_nul_in_any_text_field_is_a_violation_with_its_path() -> None:
    request = svc.RecordExecutionRequest(
        execution=pb.Execution(
            execution_id="e",
            package=pb.PackageRef(name="p", version="1", digest=GOOD_SHA),
            status="a\x00",
            labels={"k\x00": "v", "ok": "v\x00"},
        )
    )
    fields = {v.field for v in field_violations(request)}
    assert {"execution.status", "execution.labels['k\\x00']", "execution.labels['ok']"} <= fields


@pytest.mark.parametrize(
    ("seconds", "nanos", "ok"),
    [
        (253_402_300_799, 999_999_999, True),  # 9999-12-31T23:59:59.999999999Z
        (253_402_300_800, 0, False),  # 10000-01-01
        (-62_135_596_800, 0, True),  # 0001-01-01
        (-62_135_596_801, 0, False),
        (0, -1, False),
        (0, 1_000_000_000, False),
    ],
)
def test_timestamps_outside_their_defined_range_are_violations(
    seconds: int, nanos: int, ok: bool
) -> None:
    request = svc.RecordPolicyDecisionRequest(
        decision=pb.PolicyDecision(decision_id="d", policy="p")
    )
    request.decision.decided_at.seconds = seconds
    request.decision.decided_at.nanos = nanos
    fields = [v.field for v in field_violations(request)]
    assert ("decision.decided_at" in fields) is not ok
