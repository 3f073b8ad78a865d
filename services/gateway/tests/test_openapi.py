"""The OpenAPI document, and schemathesis (an independent property-based API tester) run
against the live gateway in front of the real provenance service and limiter: no 5xx, no
response outside the document (status, content type, schema)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import httpx
from gateway_support import JwksServer

from mc_gateway.app import RunningGateway

SCHEMATHESIS_BUDGET_S = 240
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)


async def test_openapi_carries_the_validation_rules(http: httpx.AsyncClient) -> None:
    doc = (await http.get("/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    get_receipt = doc["paths"]["/api/provenance/receipts/{digest}"]["get"]
    assert get_receipt["parameters"][0]["schema"]["pattern"] == "^[0-9a-f]{64}$"
    keys = doc["paths"]["/api/admin/tenants/{tenant}/keys/{key}:rotate"]["post"]
    assert [p["name"] for p in keys["parameters"]] == ["tenant", "key"]
    schemas = doc["components"]["schemas"]
    check = schemas["mc.limiter.v1.CheckRequest"]["properties"]
    tenant = check["tenant"]
    assert (tenant["type"], tenant["minLength"], tenant["maxLength"]) == ("string", 1, 64)
    assert tenant["description"].startswith("tenant is the tenant spending")  # proto comments
    assert check["cost"]["maximum"] == 1000000
    rule = schemas["mc.limiter.v1.Rule"]["properties"]
    assert rule["limits"]["minItems"] == 1 and rule["limits"]["maxItems"] == 8
    assert "RULE_SCOPE_UNSPECIFIED" not in rule["scope"]["enum"]  # not_in: [0]
    assert schemas["mc.pql.v1.Execution"]["required"] == ["package"]  # message.required
    list_receipts = doc["paths"]["/api/provenance/receipts"]["get"]["parameters"]
    assert {p["name"] for p in list_receipts} == {"pageSize", "pageToken", "executionId"}


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    gateway: RunningGateway, jwks: JwksServer, tmp_path: Path
) -> None:
    # A tenant operator: tenant RPCs act for `acme`, operator RPCs are allowed too, so that
    # every operation is reached past authentication.
    token = jwks.token(sub="fuzzer", mc_tenant="acme", roles=["mc-operator"], lifetime_s=3600)
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is a dev dependency"
    proc = await asyncio.create_subprocess_exec(
        st,
        "run",
        f"{gateway.base_url}/openapi.json",
        "--checks",
        CHECKS,
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        "25",
        "--phases",
        "examples,fuzzing",
        "--seed",
        "20261126",
        "--request-timeout",
        "20",
        "--generation-database",
        "none",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(tmp_path / "events.ndjson"),
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), SCHEMATHESIS_BUDGET_S)
    text = out.decode(errors="replace")
    (tmp_path / "schemathesis.txt").write_text(text)
    assert proc.returncode == 0, text[:12000]
    summary = [json.loads(line) for line in (tmp_path / "events.ndjson").read_text().splitlines()]
    assert summary, "schemathesis reported nothing"
