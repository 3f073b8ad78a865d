"""The `mc.pql.v1.ProvenanceService` servicer: decode request, call the domain, encode reply."""

from __future__ import annotations

from typing import Any

from mc.pql.v1 import provenance_pb2 as pb
from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_common.tenancy import require_tenant
from mc_pql import convert
from mc_pql.provenance import Provenance, SignedSubmission, Submission

SERVICE_NAME = svc.DESCRIPTOR.services_by_name["ProvenanceService"].full_name

Ctx = Any  # grpc.aio.ServicerContext; the interceptors own status handling


def _submission(tenant: str, request: svc.RecordReceiptRequest, prefix: str) -> Submission:
    if request.WhichOneof("receipt") == "signed_envelope":
        return SignedSubmission(request.signed_envelope)
    return convert.content_to_submission(tenant, request.content, f"{prefix}content")


def _signed_from(request: svc.RecordReceiptRequest) -> pb.ReceiptContent | None:
    """The content the service signed a receipt from (None when the client signed it)."""
    return request.content if request.WhichOneof("receipt") == "content" else None


class ProvenanceServicer(svc_grpc.ProvenanceServiceServicer):
    """Thin adapter over `Provenance`; errors are domain exceptions mapped by the interceptor."""

    def __init__(self, provenance: Provenance) -> None:
        self._p = provenance

    async def RecordExecution(
        self, request: svc.RecordExecutionRequest, context: Ctx
    ) -> svc.RecordExecutionResponse:
        record = await self._p.record_execution(
            require_tenant(), convert.execution_from_proto(request.execution)
        )
        return svc.RecordExecutionResponse(execution=convert.execution_to_proto(record))

    async def GetExecution(
        self, request: svc.GetExecutionRequest, context: Ctx
    ) -> svc.GetExecutionResponse:
        record = await self._p.get_execution(require_tenant(), request.execution_id)
        return svc.GetExecutionResponse(execution=convert.execution_to_proto(record))

    async def ListExecutions(
        self, request: svc.ListExecutionsRequest, context: Ctx
    ) -> svc.ListExecutionsResponse:
        items, token = await self._p.list_executions(
            require_tenant(), request.page_size, request.page_token
        )
        return svc.ListExecutionsResponse(
            executions=[convert.execution_to_proto(r) for r in items], next_page_token=token
        )

    async def RecordReceipt(
        self, request: svc.RecordReceiptRequest, context: Ctx
    ) -> svc.RecordReceiptResponse:
        tenant = require_tenant()
        [stored] = await self._p.record_receipts(
            tenant, [_submission(tenant, request, "")], convert.request_key(request)
        )
        return svc.RecordReceiptResponse(
            receipt=convert.receipt_to_proto(stored, _signed_from(request))
        )

    async def RecordReceipts(
        self, request: svc.RecordReceiptsRequest, context: Ctx
    ) -> svc.RecordReceiptsResponse:
        tenant = require_tenant()
        submissions = [
            _submission(tenant, item, f"receipts[{i}].") for i, item in enumerate(request.receipts)
        ]
        stored = await self._p.record_receipts(tenant, submissions, convert.request_key(request))
        return svc.RecordReceiptsResponse(
            receipts=[
                convert.receipt_to_proto(s, _signed_from(item))
                for s, item in zip(stored, request.receipts, strict=True)
            ]
        )

    async def GetReceipt(
        self, request: svc.GetReceiptRequest, context: Ctx
    ) -> svc.GetReceiptResponse:
        stored = await self._p.get_receipt(require_tenant(), request.digest)
        return svc.GetReceiptResponse(receipt=convert.receipt_to_proto(stored))

    async def ListReceipts(
        self, request: svc.ListReceiptsRequest, context: Ctx
    ) -> svc.ListReceiptsResponse:
        items, token = await self._p.list_receipts(
            require_tenant(), request.page_size, request.page_token, request.execution_id
        )
        return svc.ListReceiptsResponse(
            receipts=[convert.receipt_to_proto(s) for s in items], next_page_token=token
        )

    async def VerifyReceipt(
        self, request: svc.VerifyReceiptRequest, context: Ctx
    ) -> svc.VerifyReceiptResponse:
        verification = await self._p.verify_receipt(require_tenant(), request.digest)
        return svc.VerifyReceiptResponse(verification=convert.verification_to_proto(verification))

    async def VerifyChain(
        self, request: svc.VerifyChainRequest, context: Ctx
    ) -> svc.VerifyChainResponse:
        result = await self._p.verify_chain(require_tenant())
        return svc.VerifyChainResponse(
            verification=convert.verification_to_proto(result.verification),
            receipts_checked=result.receipts_checked,
            first_broken_sequence=result.first_broken_sequence,
            head_digest=result.head_digest,
        )

    async def RecordPolicyDecision(
        self, request: svc.RecordPolicyDecisionRequest, context: Ctx
    ) -> svc.RecordPolicyDecisionResponse:
        record, created = await self._p.record_decision(
            require_tenant(), convert.decision_from_proto(request.decision)
        )
        return svc.RecordPolicyDecisionResponse(
            decision=convert.decision_to_proto(record), created=created
        )

    async def GetPolicyDecision(
        self, request: svc.GetPolicyDecisionRequest, context: Ctx
    ) -> svc.GetPolicyDecisionResponse:
        record = await self._p.get_decision(require_tenant(), request.decision_id)
        return svc.GetPolicyDecisionResponse(decision=convert.decision_to_proto(record))

    async def ListPolicyDecisions(
        self, request: svc.ListPolicyDecisionsRequest, context: Ctx
    ) -> svc.ListPolicyDecisionsResponse:
        items, token = await self._p.list_decisions(
            require_tenant(), request.page_size, request.page_token, request.execution_id
        )
        return svc.ListPolicyDecisionsResponse(
            decisions=[convert.decision_to_proto(r) for r in items], next_page_token=token
        )

    async def RegisterSigningKey(
        self, request: svc.RegisterSigningKeyRequest, context: Ctx
    ) -> svc.RegisterSigningKeyResponse:
        record = await self._p.register_key(request.tenant, request.public_key_pem)
        return svc.RegisterSigningKeyResponse(key=convert.key_to_proto(record))

    async def RevokeSigningKey(
        self, request: svc.RevokeSigningKeyRequest, context: Ctx
    ) -> svc.RevokeSigningKeyResponse:
        record = await self._p.revoke_key(request.key_id)
        return svc.RevokeSigningKeyResponse(key=convert.key_to_proto(record))
