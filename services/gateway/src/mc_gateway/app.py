"""Wiring of the gateway: key store and cache, authenticator, upstreams, limiter, servers.

`start_gateway()` returns a running gateway (its gRPC server for ApiKeyService and its REST
server); tests and `main.serve()` both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field
from typing import Any

import grpc
import uvicorn

from mc.gateway.v1 import api_key_service_pb2_grpc as keys_grpc
from mc_common.db import Pool, create_pool, migrate
from mc_common.server import RunningServer, ServiceSpec, start_server
from mc_gateway import openapi
from mc_gateway.apikeys import ApiKeyStore, KeyHasher
from mc_gateway.authn import Authenticator
from mc_gateway.channels import open_channel
from mc_gateway.descriptors import Api, load_api, message_comments
from mc_gateway.keycache import KeyCache
from mc_gateway.oidc import ClaimMapping, JwksCache, TokenVerifier
from mc_gateway.ratelimit import DoorLimiter
from mc_gateway.rest import Door
from mc_gateway.routing import Router
from mc_gateway.servicer import SERVICE_NAME, ApiKeyServicer
from mc_gateway.settings import GatewaySettings
from mc_gateway.upstream import Upstreams

MIGRATIONS = "mc_gateway.migrations"


@dataclass
class RunningGateway:
    """A started gateway: REST on `http_port`, ApiKeyService on `grpc.port`."""

    settings: GatewaySettings
    grpc: RunningServer
    http: uvicorn.Server
    http_port: int
    door: Door
    pool: Pool
    keys: KeyCache
    jwks: JwksCache | None
    upstreams: Upstreams
    _closers: list[Any] = field(default_factory=list)
    _sockets: list[socket.socket] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def stop(self, grace: float | None = None) -> None:
        self.http.should_exit = True
        await self.http.shutdown(sockets=self._sockets)
        await self.grpc.stop(grace)
        await self.keys.stop()
        await self.upstreams.close()
        for close in self._closers:
            await close()
        if self.jwks is not None:
            await self.jwks.close()
        await self.pool.close()


def key_service_spec(store: ApiKeyStore) -> ServiceSpec:
    servicer = ApiKeyServicer(store)

    def register(server: grpc.aio.Server) -> None:
        keys_grpc.add_ApiKeyServiceServicer_to_server(servicer, server)

    return ServiceSpec(name="mc-gateway", service_names=[SERVICE_NAME], register=register)


async def start_gateway(settings: GatewaySettings, api: Api | None = None) -> RunningGateway:
    """Migrate, start the key cache, the ApiKeyService gRPC server and the REST server."""
    api = api or load_api(settings.descriptor_set_path)
    pool = await create_pool(
        settings.postgres_dsn,
        1,
        settings.pool_max_size,
        schema=settings.db_schema,
        name="mc-gateway",
    )
    await migrate(pool, MIGRATIONS, schema=settings.db_schema)
    hasher = KeyHasher(settings.key_pepper)
    store = ApiKeyStore(pool, hasher, settings.db_schema)
    keys = KeyCache(store, settings.postgres_dsn, settings.key_cache_ttl_s)
    keys.start()
    grpc_server = await start_server(settings, key_service_spec(store))
    # Outbound calls present the SVID the gateway's own server holds.
    identity = grpc_server.identity
    own = identity.spiffe_id or settings.identity.id_of("gateway")
    upstreams = Upstreams(
        {**settings.upstreams, SERVICE_NAME: grpc_server.address},
        identity,
        {**settings.upstream_servers, SERVICE_NAME: own},
    )
    exposed = api.only(s for s in api.services if upstreams.serves(s))
    jwks = tokens = None
    if settings.oidc_issuer and settings.oidc_jwks_url:
        jwks = JwksCache(
            settings.oidc_jwks_url,
            ttl_s=settings.oidc_jwks_ttl_s,
            min_refresh_s=settings.oidc_jwks_min_refresh_s,
        )
        tokens = TokenVerifier(
            settings.oidc_issuer,
            settings.oidc_audience,
            jwks,
            algorithms=settings.oidc_algorithms,
            leeway_s=settings.oidc_leeway_s,
            mapping=ClaimMapping(
                tenant=settings.oidc_tenant_claim,
                principal=settings.oidc_principal_claim,
                roles=settings.oidc_roles_claim,
                operator_role=settings.oidc_operator_role,
            ),
        )
    closers: list[Any] = []
    limiter = None
    if settings.limiter_address:
        channel = open_channel(identity, settings.limiter_address, settings.limiter_server)
        closers.append(channel.close)
        # Connect now, so the first caller does not pay for it (a limiter still starting is
        # not fatal: rate limiting follows rate_limit_failure until it answers).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.channel_ready(), 5)
        limiter = DoorLimiter(
            channel,
            key=settings.rate_limit_key,
            timeout_s=settings.rate_limit_timeout_s,
            fail_open=settings.rate_limit_failure == "open",
        )
    document = openapi.build(exposed, comments=message_comments(settings.descriptor_set_path))
    door = Door(
        settings,
        Router(exposed.bindings),
        Authenticator(keys, hasher, tokens),
        upstreams,
        limiter,
        lambda: document,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: without, small responses wait for the client's delayed
    # ACK (Nagle), about 40 ms per keep-alive request on Linux.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((settings.http_host, settings.http_port))
    sock.listen(1024)
    sock.setblocking(False)
    config = uvicorn.Config(
        door.asgi(),
        lifespan="off",
        access_log=False,
        log_config=None,
        http="h11",
        # Longer than load balancers' idle timeouts (often 60 s), so that they close first.
        timeout_keep_alive=75,
    )
    http = uvicorn.Server(config)
    # Server.serve() would also take over the process's signals; the gateway runs the
    # startup and shutdown halves itself, beside its gRPC server, in one event loop.
    config.load()
    http.lifespan = config.lifespan_class(config)
    await http.startup(sockets=[sock])
    return RunningGateway(
        settings,
        grpc_server,
        http,
        sock.getsockname()[1],
        door,
        pool,
        keys,
        jwks,
        upstreams,
        closers,
        [sock],
    )
