"""Recorded decisions of an execution, read from the provenance store (pql) for the tenant."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import grpc

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc.pql.v1 import provenance_service_pb2 as pql_svc
from mc.pql.v1 import provenance_service_pb2_grpc as pql_grpc
from mc_common.errors import InvalidArgument, Unavailable


@dataclass(frozen=True, slots=True)
class RecordedDecision:
    """One decision as pql stored it."""

    decision_id: str
    policy: str
    rule: str
    allow: bool
    reason: str
    remediation: str
    bundle_digest: str
    decided_at: datetime


class DecisionHistory(Protocol):
    async def for_execution(
        self, tenant: str, execution_id: str, page_size: int, page_token: str
    ) -> tuple[list[RecordedDecision], str]: ...


class NoDecisionHistory:
    """No provenance store configured."""

    async def for_execution(
        self, tenant: str, execution_id: str, page_size: int, page_token: str
    ) -> tuple[list[RecordedDecision], str]:
        raise Unavailable(
            "no provenance store is configured (MC_EDGE_POLICY_PQL_ADDRESS)",
            reason=ErrorReason.ERROR_REASON_PROVENANCE_UNAVAILABLE,
        )


class PqlDecisionHistory:
    """ListPolicyDecisions(execution_id) on pql, acting for the caller's tenant."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float = 5.0) -> None:
        self._stub = pql_grpc.ProvenanceServiceStub(channel)
        self._timeout_s = timeout_s

    async def for_execution(
        self, tenant: str, execution_id: str, page_size: int, page_token: str
    ) -> tuple[list[RecordedDecision], str]:
        try:
            response = await self._stub.ListPolicyDecisions(
                pql_svc.ListPolicyDecisionsRequest(
                    execution_id=execution_id, page_size=page_size, page_token=page_token
                ),
                metadata=(("x-mc-tenant", tenant),),
                timeout=self._timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument.field("page_token", exc.details() or "invalid") from exc
            raise Unavailable(
                f"the provenance store did not answer: {exc.code().name}",
                reason=ErrorReason.ERROR_REASON_PROVENANCE_UNAVAILABLE,
            ) from exc
        return [
            RecordedDecision(
                d.decision_id,
                d.policy,
                d.rule,
                d.allow,
                d.reason,
                d.remediation,
                d.bundle_digest,
                d.decided_at.ToDatetime(tzinfo=UTC),
            )
            for d in response.decisions
        ], response.next_page_token
