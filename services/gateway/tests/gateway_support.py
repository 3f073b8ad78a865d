"""Helpers shared by the gateway tests (imported by name; tests/ is on pythonpath)."""

from __future__ import annotations

import base64
import json
import socket
import time
from typing import Any

import uvicorn
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mc.gateway.v1 import api_key_service_pb2 as kpb
from mc.gateway.v1 import api_key_service_pb2_grpc as kgrpc
from mc_gateway.app import RunningGateway

OPERATOR_MD = (("x-mc-principal", "operator:test-ops"),)
ISSUER = "https://issuer.test"
AUDIENCE = "maestro-conductor"


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


class JwksServer:
    """A local OIDC issuer's JWKS endpoint (a real HTTP server on a free port) and its keys."""

    def __init__(self) -> None:
        self.keys: list[ECKey] = [ECKey.generate_key("P-256", parameters={"kid": "k1"})]
        self.fetches = 0
        self._server: uvicorn.Server | None = None
        self._sock: socket.socket | None = None
        self.url = ""

    async def start(self) -> None:
        async def jwks(request: Request) -> JSONResponse:
            self.fetches += 1
            return JSONResponse(KeySet(list(self.keys)).as_dict(private=False))

        app = Starlette(routes=[Route("/jwks.json", jwks)])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        config = uvicorn.Config(app, lifespan="off", access_log=False, log_config=None)
        server = uvicorn.Server(config)
        config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server, self._sock = server, sock
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/jwks.json"

    async def stop(self) -> None:
        if self._server is not None and self._sock is not None:
            self._server.should_exit = True
            await self._server.shutdown(sockets=[self._sock])

    def rotate(self, kid: str) -> ECKey:
        """Publish a new key beside the old one (what an issuer does before switching)."""
        key = ECKey.generate_key("P-256", parameters={"kid": kid})
        self.keys.append(key)
        return key

    def token(
        self,
        *,
        key: ECKey | None = None,
        issuer: str = ISSUER,
        audience: str = AUDIENCE,
        lifetime_s: int = 300,
        not_before_s: int = 0,
        **claims: Any,
    ) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        body = {
            "iss": issuer,
            "aud": audience,
            "sub": "alice",
            "iat": now,
            "exp": now + lifetime_s,
            "nbf": now + not_before_s,
            **claims,
        }
        return jwt.encode({"alg": "ES256", "kid": key.kid}, body, key)


def unsigned_token(**claims: Any) -> str:
    """A JWT with `alg: none` and no signature (RFC 7519 §6), as an attacker would send."""

    def b64(data: dict[str, Any]) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 300, **claims}
    return f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{b64(body)}."
