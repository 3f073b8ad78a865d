"""REST through the gateway to the real provenance service and limiter."""

from __future__ import annotations

import httpx
from gateway_support import bearer, issue_key

from mc_gateway.app import RunningGateway

SHA = "ab" * 32


def receipt_body(execution_id: str = "exec-1") -> dict[str, object]:
    return {
        "content": {
            "executionId": execution_id,
            "package": {"name": "acme/etl", "version": "1.2.0", "digest": SHA},
            "steps": [
                {
                    "name": "extract",
                    "status": "succeeded",
                    "startedAt": "2026-11-01T12:00:00Z",
                    "finishedAt": "2026-11-01T12:00:05Z",
                }
            ],
            "cost": {"currency": "USD", "amountMicros": "1250000"},
            "startedAt": "2026-11-01T12:00:00Z",
            "finishedAt": "2026-11-01T12:00:10Z",
            "region": "us-east-1",
        }
    }


async def test_record_then_read_a_receipt_over_rest(
    gateway: RunningGateway, http: httpx.AsyncClient
) -> None:
    key = await issue_key(gateway, "acme")
    created = await http.post(
        "/api/provenance/receipts", json=receipt_body(), headers=bearer(key.secret)
    )
    assert created.status_code == 200, created.text
    receipt = created.json()["receipt"]
    assert receipt["tenant"] == "acme" and receipt["sequence"] == "1"
    got = await http.get(
        f"/api/provenance/receipts/{receipt['digest']}", headers=bearer(key.secret)
    )
    assert got.status_code == 200 and got.json()["receipt"]["digest"] == receipt["digest"]
    assert got.json()["receipt"]["verification"]["valid"] is True
    listed = await http.get(
        "/api/provenance/receipts", params={"pageSize": 10}, headers=bearer(key.secret)
    )
    assert [r["digest"] for r in listed.json()["receipts"]] == [receipt["digest"]]
    assert got.headers["x-request-id"]


async def test_errors_are_google_rpc_status_with_typed_details(
    gateway: RunningGateway, http: httpx.AsyncClient
) -> None:
    key = await issue_key(gateway, "acme")
    bad = await http.get("/api/provenance/receipts/not-a-digest", headers=bearer(key.secret))
    assert bad.status_code == 400
    body = bad.json()
    assert body["code"] == 3 and body["message"]
    types = {d["@type"] for d in body["details"]}
    assert "type.googleapis.com/google.rpc.BadRequest" in types
    missing = await http.get(f"/api/provenance/receipts/{'0' * 64}", headers=bearer(key.secret))
    assert missing.status_code == 404 and missing.json()["code"] == 5
