"""Helpers shared by the gateway tests (imported by name; tests/ is on pythonpath)."""

from __future__ import annotations

from mc.gateway.v1 import api_key_service_pb2 as kpb
from mc.gateway.v1 import api_key_service_pb2_grpc as kgrpc
from mc_gateway.app import RunningGateway

OPERATOR_MD = (("x-mc-principal", "operator:test-ops"),)


async def issue_key(
    gateway: RunningGateway, tenant: str, principal: str = "service:ci"
) -> kpb.CreateApiKeyResponse:
    """A key created the way an operator would, over the gateway's own gRPC port (mTLS with
    the gateway's SVID, as the gateway's REST door does it)."""
    async with gateway.grpc.identity.channel(gateway.grpc.address, server="gateway") as channel:
        stub = kgrpc.ApiKeyServiceStub(channel)
        reply: kpb.CreateApiKeyResponse = await stub.CreateApiKey(
            kpb.CreateApiKeyRequest(parent=f"tenants/{tenant}", principal=principal),
            metadata=OPERATOR_MD,
        )
        return reply


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}
