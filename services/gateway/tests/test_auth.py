"""Authentication at the door, and the attacks it stops: each is refused and changes nothing.

Everything runs against the real provenance service and limiter behind a real gateway, with a
local OIDC issuer (JWKS over HTTP) whose tokens are made with joserfc.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from gateway_support import JwksServer, bearer, issue_key, unsigned_token
from test_rest_fleet import receipt_body

from mc.pql.v1 import provenance_service_pb2 as psvc
from mc.pql.v1 import provenance_service_pb2_grpc as pgrpc
from mc_common.server import RunningServer
from mc_common.testing.identity import TestTrustDomain
from mc_gateway.app import RunningGateway, start_gateway

REVOCATION_BOUND_S = 5.0


async def receipts_of(pql: RunningServer, tenant: str, trust: TestTrustDomain) -> list[str]:
    """A tenant's receipts, read directly from the provenance service (not via the gateway),
    over mTLS as the gateway's workload (the only peer pql believes tenant metadata from)."""
    async with trust.channel(pql.address, server="pql") as channel:
        reply = await pgrpc.ProvenanceServiceStub(channel).ListReceipts(
            psvc.ListReceiptsRequest(), metadata=(("x-mc-tenant", tenant),)
        )
    return [r.digest for r in reply.receipts]


def operator_token(jwks: JwksServer) -> dict[str, str]:
    return bearer(jwks.token(sub="ops-1", roles=["mc-operator"]))


async def test_no_credentials_is_401_with_a_challenge(http: httpx.AsyncClient) -> None:
    reply = await http.get("/api/provenance/receipts")
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"].startswith('Bearer realm="maestro-conductor"')
    assert reply.json()["code"] == 16
    bad = await http.get("/api/provenance/receipts", headers=bearer("mck_nope"))
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]


async def test_a_forged_tenant_header_is_ignored(
    gateway: RunningGateway,
    http: httpx.AsyncClient,
    pql_server: RunningServer,
    mc_trust_domain: TestTrustDomain,
) -> None:
    key = await issue_key(gateway, "acme")
    forged = {**bearer(key.secret), "x-mc-tenant": "victim", "x-mc-principal": "operator:x"}
    reply = await http.post("/api/provenance/receipts", json=receipt_body(), headers=forged)
    assert reply.status_code == 200 and reply.json()["receipt"]["tenant"] == "acme"
    assert await receipts_of(pql_server, "victim", mc_trust_domain) == []
    admin = await http.post(
        "/api/admin/provenance/signing-keys",
        json={"tenant": "victim", "publicKeyPem": "x"},
        headers=forged,
    )
    assert admin.status_code == 403


async def test_a_key_of_another_tenant_gets_the_404_of_an_absent_resource(
    gateway: RunningGateway, http: httpx.AsyncClient
) -> None:
    owner = await issue_key(gateway, "acme")
    other = await issue_key(gateway, "globex")
    made = await http.post(
        "/api/provenance/receipts", json=receipt_body(), headers=bearer(owner.secret)
    )
    digest = made.json()["receipt"]["digest"]
    theirs = await http.get(f"/api/provenance/receipts/{digest}", headers=bearer(other.secret))
    absent = await http.get(f"/api/provenance/receipts/{'0' * 64}", headers=bearer(other.secret))
    assert theirs.status_code == absent.status_code == 404
    assert theirs.json()["code"] == absent.json()["code"] == 5
    # A request body naming another tenant is the same 404 (the limiter's Check has `tenant`).
    check = await http.post(
        "/api/limits:check",
        json={"tenant": "acme", "key": "executions:start"},
        headers=bearer(other.secret),
    )
    assert check.status_code == 404 and check.json()["code"] == 5


async def test_api_key_lifecycle_over_rest_rotation_overlap_and_revocation_on_every_replica(
    gateway: RunningGateway,
    http: httpx.AsyncClient,
    jwks: JwksServer,
    pql_server: RunningServer,
    mc_trust_domain: TestTrustDomain,
) -> None:
    ops = operator_token(jwks)
    created = await http.post(
        "/api/admin/tenants/acme/keys", json={"principal": "service:ci"}, headers=ops
    )
    assert created.status_code == 200, created.text
    secret = created.json()["secret"]
    name = created.json()["apiKey"]["name"]
    assert secret.startswith("mck_") and name.startswith("tenants/acme/keys/")
    listed = (await http.get("/api/admin/tenants/acme/keys", headers=ops)).json()
    assert [k["name"] for k in listed["apiKeys"]] == [name]
    assert secret not in str(listed)  # shown once, never listed

    rotated = await http.post(
        f"/api/admin/{name}:rotate", json={"overlapSeconds": 600}, headers=ops
    )
    assert rotated.status_code == 200
    successor = rotated.json()["secret"]
    assert rotated.json()["previous"]["state"] == "API_KEY_STATE_EXPIRING"
    for usable in (secret, successor):  # the overlap: both work
        reply = await http.get("/api/provenance/receipts", headers=bearer(usable))
        assert reply.status_code == 200

    replica = await start_gateway(gateway.settings)  # a second replica on the same database
    try:
        await asyncio.wait_for(replica.keys.listening.wait(), 10)
        async with httpx.AsyncClient(base_url=replica.base_url) as other:
            warm = await other.get("/api/provenance/receipts", headers=bearer(successor))
            assert warm.status_code == 200  # now cached on the replica
            revoked = await http.delete(
                f"/api/admin/{rotated.json()['apiKey']['name']}", headers=ops
            )
            assert revoked.json()["apiKey"]["state"] == "API_KEY_STATE_REVOKED"
            started = time.monotonic()
            while True:
                reply = await other.get("/api/provenance/receipts", headers=bearer(successor))
                if reply.status_code == 401:
                    break
                assert time.monotonic() - started < REVOCATION_BOUND_S, "revocation too slow"
                await asyncio.sleep(0.05)
            write = await other.post(
                "/api/provenance/receipts", json=receipt_body(), headers=bearer(successor)
            )
            assert write.status_code == 401
    finally:
        await replica.stop(0)
    assert await receipts_of(pql_server, "acme", mc_trust_domain) == []


async def test_operator_comes_only_from_the_configured_role_claim(
    http: httpx.AsyncClient, jwks: JwksServer
) -> None:
    tenant_user = bearer(jwks.token(mc_tenant="acme", roles=["admin", "operator"]))
    refused = await http.post(
        "/api/admin/tenants/acme/keys", json={"principal": "service:ci"}, headers=tenant_user
    )
    assert refused.status_code == 403
    operator = await http.get("/api/admin/tenants/acme/keys", headers=operator_token(jwks))
    assert operator.status_code == 200


async def test_a_tenant_token_acts_for_its_tenant_and_issuer_key_rotation_needs_no_restart(
    http: httpx.AsyncClient, jwks: JwksServer, pql_server: RunningServer
) -> None:
    reply = await http.post(
        "/api/provenance/receipts",
        json=receipt_body(),
        headers=bearer(jwks.token(mc_tenant="acme")),
    )
    assert reply.status_code == 200 and reply.json()["receipt"]["tenant"] == "acme"
    new_key = jwks.rotate("k2")
    again = await http.get(
        "/api/provenance/receipts", headers=bearer(jwks.token(key=new_key, mc_tenant="acme"))
    )
    assert again.status_code == 200 and len(again.json()["receipts"]) == 1


@pytest.mark.parametrize(
    "attack",
    ["alg_none", "wrong_audience", "wrong_issuer", "expired", "not_yet_valid", "unknown_key"],
)
async def test_bad_tokens_are_refused_and_change_nothing(
    http: httpx.AsyncClient,
    jwks: JwksServer,
    pql_server: RunningServer,
    mc_trust_domain: TestTrustDomain,
    attack: str,
) -> None:
    tokens = {
        "alg_none": lambda: unsigned_token(mc_tenant="acme"),
        "wrong_audience": lambda: jwks.token(audience="someone-else", mc_tenant="acme"),
        "wrong_issuer": lambda: jwks.token(issuer="https://evil.test", mc_tenant="acme"),
        # A token that was valid once, replayed after it expired.
        "expired": lambda: jwks.token(lifetime_s=-60, mc_tenant="acme"),
        "not_yet_valid": lambda: jwks.token(not_before_s=600, mc_tenant="acme"),
        "unknown_key": lambda: JwksServer().token(mc_tenant="acme"),
    }
    reply = await http.post(
        "/api/provenance/receipts", json=receipt_body(), headers=bearer(tokens[attack]())
    )
    assert reply.status_code == 401, reply.text
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    assert await receipts_of(pql_server, "acme", mc_trust_domain) == []


async def test_a_revoked_key_is_refused_and_changes_nothing(
    gateway: RunningGateway,
    http: httpx.AsyncClient,
    jwks: JwksServer,
    pql_server: RunningServer,
    mc_trust_domain: TestTrustDomain,
) -> None:
    key = await issue_key(gateway, "acme")
    revoked = await http.post(f"/api/admin/{key.api_key.name}:revoke", headers=operator_token(jwks))
    assert revoked.status_code == 200
    reply = await http.post(
        "/api/provenance/receipts", json=receipt_body(), headers=bearer(key.secret)
    )
    assert reply.status_code == 401
    assert await receipts_of(pql_server, "acme", mc_trust_domain) == []
