"""Fixtures of the gateway tests: a real provenance service and limiter (Postgres, Redis), the
gateway in front of them, an operator-issued API key per tenant, and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from gateway_support import AUDIENCE, ISSUER, JwksServer

from mc_common.server import RunningServer, start_server
from mc_common.signing import PemSigner
from mc_common.testing.identity import TestTrustDomain
from mc_gateway.app import RunningGateway, start_gateway
from mc_gateway.settings import GatewaySettings
from mc_limiter.app import LimiterApp
from mc_limiter.settings import LimiterSettings
from mc_pql.app import PqlApp
from mc_pql.settings import PqlSettings


@pytest.fixture
async def pql_server(
    pg_dsn: str, tmp_path: Path, mc_trust_domain: TestTrustDomain
) -> AsyncIterator[RunningServer]:
    key = tmp_path / "service-key.pem"
    PemSigner.generate().save(key)
    settings = PqlSettings(
        postgres_dsn=pg_dsn,
        signing_key_path=key,
        pool_max_size=4,
        identity=mc_trust_domain.settings("pql"),  # the workload the gateway expects
    )
    app = await PqlApp.create(settings)
    running = await start_server(settings, app.spec())
    yield running
    await running.stop(0)
    await app.close()


@pytest.fixture
async def limiter_server(
    redis_server_url: str,
    redis_prefix: str,
    redis_client: object,
    mc_trust_domain: TestTrustDomain,
) -> AsyncIterator[RunningServer]:
    settings = LimiterSettings(
        redis_urls=[redis_server_url],
        key_prefix=f"{redis_prefix}rl",
        fairshare_key_prefix=f"{redis_prefix}fs",
        unmatched="allow",
        identity=mc_trust_domain.settings("limiter"),
    )
    app = await LimiterApp.create(settings)
    running = await start_server(settings, app.spec())
    yield running
    await running.stop(0)
    await app.close()


@pytest.fixture
async def jwks() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def gateway_settings(
    pg_dsn: str,
    pql_server: RunningServer,
    limiter_server: RunningServer,
    mc_trust_domain: TestTrustDomain,
    jwks: JwksServer,
) -> GatewaySettings:
    return GatewaySettings(
        postgres_dsn=pg_dsn,
        identity=mc_trust_domain.settings("gateway"),
        upstreams={"mc.pql.v1": pql_server.address, "mc.limiter.v1": limiter_server.address},
        limiter_address=limiter_server.address,
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        oidc_jwks_url=jwks.url,
        oidc_algorithms=["ES256"],
        oidc_jwks_min_refresh_s=0,
        oidc_leeway_s=0,
    )


@pytest.fixture
async def gateway(gateway_settings: GatewaySettings) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(gateway_settings)
    yield running
    await running.stop(0)


@pytest.fixture
async def http(gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
        yield client
