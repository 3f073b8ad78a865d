"""Builders shared by the provenance tests (imported by name; tests/ is on pythonpath)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mc.pql.v1 import provenance_pb2 as pb
from mc.pql.v1 import provenance_service_pb2 as svc

SHA = "ab" * 32
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def md(tenant: str) -> list[tuple[str, str]]:
    return [("x-mc-tenant", tenant)]


OPERATOR = [("x-mc-principal", "operator:test")]


def content(execution_id: str = "exec-1", n: int = 0) -> pb.ReceiptContent:
    """A valid receipt content; `n` varies it."""
    out = pb.ReceiptContent(
        execution_id=execution_id,
        package=pb.PackageRef(name="acme/etl", version="1.2.0", digest=SHA),
        steps=[
            pb.Step(
                name="extract",
                status="succeeded",
                outputs=[pb.StepOutput(name="rows.csv", sha256=f"{n:064x}")],
            )
        ],
        policy_decisions=[
            pb.DecisionRef(decision_id=f"d-{n}", policy="mc.limits@1", rule="allow", allow=True)
        ],
        cost=pb.Cost(currency="USD", amount_micros=1_250_000 + n),
        region="us-east-1",
    )
    out.steps[0].started_at.FromDatetime(T0)
    out.steps[0].finished_at.FromDatetime(T0 + timedelta(seconds=5))
    out.started_at.FromDatetime(T0)
    out.finished_at.FromDatetime(T0 + timedelta(seconds=10))
    return out


def record(execution_id: str = "exec-1", n: int = 0) -> svc.RecordReceiptRequest:
    return svc.RecordReceiptRequest(content=content(execution_id, n))
