"""The `mc.policy.v1.PolicyService` servicer: decode request, call the domain, encode reply."""

from __future__ import annotations

from typing import Any

from mc.policy.v1 import policy_service_pb2 as svc
from mc.policy.v1 import policy_service_pb2_grpc as svc_grpc
from mc_edge_policy import convert
from mc_edge_policy.edge_policy import EdgePolicy, current_caller

SERVICE_NAME = svc.DESCRIPTOR.services_by_name["PolicyService"].full_name

Ctx = Any  # grpc.aio.ServicerContext; the interceptors own status handling


class PolicyServicer(svc_grpc.PolicyServiceServicer):
    """Thin adapter over `EdgePolicy`; errors are domain exceptions mapped by the interceptor."""

    def __init__(self, policy: EdgePolicy) -> None:
        self._p = policy

    async def Evaluate(self, request: svc.EvaluateRequest, context: Ctx) -> svc.EvaluateResponse:
        decision = await self._p.evaluate(
            current_caller(),
            request.package,
            convert.input_from_proto(request.input),
            execution_id=request.execution_id,
            enforce=request.enforce,
        )
        return svc.EvaluateResponse(decision=convert.decision_to_proto(decision))

    async def Explain(self, request: svc.ExplainRequest, context: Ctx) -> svc.ExplainResponse:
        explained = await self._p.explain(
            current_caller(),
            request.package,
            convert.input_from_proto(request.input),
            execution_id=request.execution_id,
        )
        return svc.ExplainResponse(
            decision=convert.decision_to_proto(explained.decision),
            fired_rules=[convert.fired_to_proto(r) for r in explained.decision.fired],
            input=convert.explanation_input_to_proto(explained.redacted_input),
        )

    async def ExplainExecution(
        self, request: svc.ExplainExecutionRequest, context: Ctx
    ) -> svc.ExplainExecutionResponse:
        explained, token = await self._p.explain_execution(
            current_caller(), request.execution_id, request.page_size, request.page_token
        )
        return svc.ExplainExecutionResponse(
            decisions=[convert.explained_to_proto(e) for e in explained], next_page_token=token
        )

    async def GetPolicyStatus(
        self, request: svc.GetPolicyStatusRequest, context: Ctx
    ) -> svc.GetPolicyStatusResponse:
        return convert.status_to_proto(self._p.status())
