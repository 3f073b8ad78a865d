"""`maestro keys ...` against a real gateway (over mTLS with the CLI's SVID): create shows the
secret once, list never shows it, rotate keeps the old key for the overlap, revoke stops it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from gateway_support import bearer

from maestro_cli.main import main as maestro
from mc_common.testing.identity import TEST_SERVER, TestTrustDomain
from mc_gateway.app import RunningGateway, start_gateway
from mc_gateway.settings import GatewaySettings

SECRET = re.compile(r"secret \(shown once, store it now\): (mck_\S+)")


@pytest.fixture
async def cli_gateway(
    pg_dsn: str, mc_trust_domain: TestTrustDomain
) -> AsyncIterator[RunningGateway]:
    # The CLI in tests calls with the session's test SVID (MC_IDENTITY_* points at it); in the
    # dev fleet that is `maestro-cli`, allowed as an operator caller there.
    identity = mc_trust_domain.settings("gateway", operator_callers=["gateway", TEST_SERVER])
    running = await start_gateway(GatewaySettings(postgres_dsn=pg_dsn, identity=identity))
    yield running
    await running.stop(0)


async def run_cli(
    capsys: pytest.CaptureFixture[str], gateway: RunningGateway, *argv: str
) -> tuple[int, str]:
    args = [*argv, "--address", gateway.grpc.address, "--operator", "ops-1"]
    code = await asyncio.to_thread(maestro, args)
    out = capsys.readouterr()
    return code, out.out + out.err


async def test_keys_lifecycle_from_the_cli(
    cli_gateway: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await run_cli(
        capsys, cli_gateway, "keys", "create", "--tenant", "acme", "--principal", "service:ci"
    )
    assert code == 0, out
    found = SECRET.search(out)
    assert found is not None
    secret = found.group(1)
    key_id = secret.split("_")[1]
    code, listing = await run_cli(capsys, cli_gateway, "keys", "list", "--tenant", "acme")
    assert code == 0 and key_id in listing and secret not in listing and "active" in listing
    code, rotated = await run_cli(
        capsys, cli_gateway, "keys", "rotate", "--tenant", "acme", key_id, "--overlap", "60"
    )
    assert code == 0 and "expiring" in rotated
    async with httpx.AsyncClient(base_url=cli_gateway.base_url) as http:
        assert (await http.get("/healthz")).status_code == 200
        code, out = await run_cli(capsys, cli_gateway, "keys", "revoke", "--tenant", "acme", key_id)
        assert code == 0 and "revoked" in out
        reply = await http.get("/api/admin/tenants/acme/keys", headers=bearer(secret))
        assert reply.status_code == 401
    code, out = await run_cli(capsys, cli_gateway, "keys", "revoke", "--tenant", "globex", key_id)
    assert code == 1 and "NOT_FOUND" in out  # a key is found only in its own tenant


async def test_key_listing_pages_and_refuses_forged_page_tokens(
    cli_gateway: RunningGateway,
) -> None:
    import grpc
    from gateway_support import OPERATOR_MD, issue_key

    from mc.gateway.v1 import api_key_service_pb2 as kpb
    from mc.gateway.v1 import api_key_service_pb2_grpc as kgrpc

    made = {(await issue_key(cli_gateway, "acme")).api_key.key_id for _ in range(3)}
    await issue_key(cli_gateway, "globex")
    identity = cli_gateway.grpc.identity
    async with identity.channel(cli_gateway.grpc.address, server="gateway") as channel:
        stub = kgrpc.ApiKeyServiceStub(channel)
        seen: list[str] = []
        token = ""
        while True:
            page = await stub.ListApiKeys(
                kpb.ListApiKeysRequest(parent="tenants/acme", page_size=2, page_token=token),
                metadata=OPERATOR_MD,
            )
            assert len(page.api_keys) <= 2
            seen += [k.key_id for k in page.api_keys]
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(made)  # every key once, none of another tenant
        for forged in ("!!", "bnVsbA==", "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwgImsiXQ=="):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListApiKeys(
                    kpb.ListApiKeysRequest(parent="tenants/acme", page_token=forged),
                    metadata=OPERATOR_MD,
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
