"""Rate limiting at the door, through the real limiter: per API key and per tenant, answered
with 429, Retry-After and the IETF RateLimit / RateLimit-Policy fields (read with http-sf, an
independent Structured Fields parser)."""

from __future__ import annotations

import http_sf
import httpx
from gateway_support import JwksServer, bearer, issue_key

from mc_gateway.app import RunningGateway


def door_rule(scope: str, limit: int) -> dict[str, object]:
    return {
        "scope": scope,
        "key": "gateway:requests",
        "limits": [
            {
                "name": "per-minute",
                "algorithm": "ALGORITHM_SLIDING_WINDOW",
                "limit": str(limit),
                "windowMs": "60000",
            }
        ],
    }


async def put_rule(http: httpx.AsyncClient, jwks: JwksServer, rule_id: str, body: object) -> None:
    ops = bearer(jwks.token(sub="ops-1", roles=["mc-operator"]))
    reply = await http.put(f"/api/admin/limits/rules/{rule_id}", json=body, headers=ops)
    assert reply.status_code == 200, reply.text


async def test_each_api_key_has_its_own_allowance(
    gateway: RunningGateway, http: httpx.AsyncClient, jwks: JwksServer
) -> None:
    await put_rule(http, jwks, "door-per-key", door_rule("RULE_SCOPE_TOKEN", 2))
    first = await issue_key(gateway, "acme")
    second = await issue_key(gateway, "acme")
    answers = [
        await http.get("/api/provenance/receipts", headers=bearer(first.secret)) for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 200, 429]
    ok, denied = answers[0], answers[2]
    policy = http_sf.parse(ok.headers["ratelimit-policy"].encode(), tltype="list")
    assert policy == [("door-per-key/per-minute", {"q": 2})]
    current = http_sf.parse(ok.headers["ratelimit"].encode(), tltype="list")
    assert current[0][0] == "door-per-key/per-minute" and current[0][1]["r"] == 1
    assert int(denied.headers["retry-after"]) >= 1
    assert http_sf.parse(denied.headers["ratelimit"].encode(), tltype="list")[0][1]["r"] == 0
    body = denied.json()
    assert body["code"] == 8
    assert {d["@type"] for d in body["details"]} >= {
        "type.googleapis.com/google.rpc.RetryInfo",
        "type.googleapis.com/google.rpc.QuotaFailure",
    }
    other = await http.get("/api/provenance/receipts", headers=bearer(second.secret))
    assert other.status_code == 200  # another key of the same tenant is not affected


async def test_a_tenant_allowance_is_shared_by_its_keys(
    gateway: RunningGateway, http: httpx.AsyncClient, jwks: JwksServer
) -> None:
    await put_rule(http, jwks, "door-per-tenant", door_rule("RULE_SCOPE_TENANT", 2))
    keys = [await issue_key(gateway, "acme") for _ in range(3)]
    codes = [
        (await http.get("/api/provenance/receipts", headers=bearer(k.secret))).status_code
        for k in keys
    ]
    assert codes == [200, 200, 429]
    elsewhere = await issue_key(gateway, "globex")
    reply = await http.get("/api/provenance/receipts", headers=bearer(elsewhere.secret))
    assert reply.status_code == 200  # one tenant's use never limits another
