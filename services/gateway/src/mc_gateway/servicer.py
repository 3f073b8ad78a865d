"""The `mc.gateway.v1.ApiKeyService` servicer: decode request, call the store, encode reply."""

from __future__ import annotations

from typing import Any

from mc.gateway.v1 import api_key_service_pb2 as pb
from mc.gateway.v1 import api_key_service_pb2_grpc as pb_grpc
from mc_gateway import convert
from mc_gateway.apikeys import ApiKeyStore

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ApiKeyService"].full_name

Ctx = Any  # grpc.aio.ServicerContext; the interceptors own access checks and status handling


class ApiKeyServicer(pb_grpc.ApiKeyServiceServicer):
    """Thin adapter over `ApiKeyStore` (operator access is declared in the proto)."""

    def __init__(self, store: ApiKeyStore) -> None:
        self._store = store

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Ctx
    ) -> pb.CreateApiKeyResponse:
        tenant = convert.tenant_of_parent(request.parent)
        new = await self._store.create(tenant, request.principal, request.display_name)
        return pb.CreateApiKeyResponse(api_key=convert.key_to_proto(new.record), secret=new.secret)

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Ctx
    ) -> pb.ListApiKeysResponse:
        tenant = convert.tenant_of_parent(request.parent)
        page, token = await self._store.list(tenant, request.page_size, request.page_token)
        return pb.ListApiKeysResponse(
            api_keys=[convert.key_to_proto(r) for r in page], next_page_token=token
        )

    async def RotateApiKey(
        self, request: pb.RotateApiKeyRequest, context: Ctx
    ) -> pb.RotateApiKeyResponse:
        tenant, key_id = convert.key_of_name(request.name)
        new, old = await self._store.rotate(
            tenant, key_id, convert.overlap(request.overlap_seconds)
        )
        return pb.RotateApiKeyResponse(
            api_key=convert.key_to_proto(new.record),
            secret=new.secret,
            previous=convert.key_to_proto(old),
        )

    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: Ctx
    ) -> pb.RevokeApiKeyResponse:
        tenant, key_id = convert.key_of_name(request.name)
        record = await self._store.revoke(tenant, key_id)
        return pb.RevokeApiKeyResponse(api_key=convert.key_to_proto(record))
