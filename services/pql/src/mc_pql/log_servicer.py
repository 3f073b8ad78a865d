"""The `mc.pql.v1.ReceiptLogService` servicer: decode request, call `ReceiptLog`, encode reply."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

from mc.pql.v1 import receipt_log_service_pb2 as log_pb
from mc.pql.v1 import receipt_log_service_pb2_grpc as log_grpc
from mc_common.signing import PublicKey
from mc_common.tenancy import require_tenant
from mc_pql import log_convert
from mc_pql.log import ReceiptLog

LOG_SERVICE_NAME = log_pb.DESCRIPTOR.services_by_name["ReceiptLogService"].full_name

Ctx = Any  # grpc.aio.ServicerContext; the interceptors own status handling


class ReceiptLogServicer(log_grpc.ReceiptLogServiceServicer):
    """Thin adapter over `ReceiptLog`; errors are domain exceptions mapped by the interceptor."""

    def __init__(
        self,
        receipt_log: ReceiptLog,
        current_key: PublicKey,
        previous_keys: list[PublicKey],
        key_validity: Mapping[str, tuple[datetime | None, datetime | None]],
    ) -> None:
        self._log = receipt_log
        self._keys = log_convert.verification_keys(
            current_key, previous_keys, key_validity, receipt_log.signer
        )

    async def GetCheckpoint(
        self, request: log_pb.GetCheckpointRequest, context: Ctx
    ) -> log_pb.GetCheckpointResponse:
        tenant = require_tenant()
        stored = await self._log.checkpoint(tenant)
        return log_pb.GetCheckpointResponse(
            checkpoint=log_convert.checkpoint(stored, self._log.origin(tenant))
        )

    async def GetInclusionProof(
        self, request: log_pb.GetInclusionProofRequest, context: Ctx
    ) -> log_pb.GetInclusionProofResponse:
        tenant = require_tenant()
        proof = await self._log.inclusion(tenant, request.digest, request.tree_size)
        return log_convert.inclusion(proof, self._log.origin(tenant))

    async def GetConsistencyProof(
        self, request: log_pb.GetConsistencyProofRequest, context: Ctx
    ) -> log_pb.GetConsistencyProofResponse:
        hashes = await self._log.consistency(
            require_tenant(), request.first_size, request.second_size
        )
        return log_pb.GetConsistencyProofResponse(hashes=hashes)

    async def GetLogEntries(
        self, request: log_pb.GetLogEntriesRequest, context: Ctx
    ) -> log_pb.GetLogEntriesResponse:
        rows = await self._log.entries(require_tenant(), request.start, request.end)
        return log_pb.GetLogEntriesResponse(entries=[log_convert.entry(r) for r in rows])

    async def AuditLog(
        self, request: log_pb.AuditLogRequest, context: Ctx
    ) -> AsyncIterator[log_pb.AuditLogResponse]:
        tenant = require_tenant()
        origin = self._log.origin(tenant)
        async for event in self._log.audit(tenant, request.start):
            yield log_convert.audit_event(event, origin)

    async def GetVerificationKeys(
        self, request: log_pb.GetVerificationKeysRequest, context: Ctx
    ) -> log_pb.GetVerificationKeysResponse:
        require_tenant()
        return self._keys
