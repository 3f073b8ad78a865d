"""Transcoding rules, end to end through a real gateway and a real gRPC server, on a test-only
service that uses every feature: `{name=tenants/*/things/*}`, `**`, additional_bindings, a field
body with response_body, `body: "*"` with a path variable and a verb, query parameters (nested,
repeated, enums, well-known types), server streaming, error details, deadlines, request ids and
trace context."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from echo_service import SERVICE, load_echo_api, start_echo_server
from gateway_support import bearer, issue_key

from mc_common.testing.identity import TestTrustDomain
from mc_gateway.app import RunningGateway, start_gateway
from mc_gateway.settings import GatewaySettings


@pytest.fixture
async def echo_gateway(
    pg_dsn: str, tmp_path: Path, mc_trust_domain: TestTrustDomain
) -> AsyncIterator[RunningGateway]:
    path = tmp_path / "echo.binpb"
    api = load_echo_api(path)
    server, address = await start_echo_server(api, mc_trust_domain.identity("echo"))
    settings = GatewaySettings(
        postgres_dsn=pg_dsn,
        identity=mc_trust_domain.settings("gateway"),
        descriptor_set_path=path,
        upstreams={SERVICE: address},
        upstream_servers={SERVICE: "echo"},
    )
    running = await start_gateway(settings)
    yield running
    await running.stop(0)
    await server.stop(0)


@pytest.fixture
async def client(echo_gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    key = await issue_key(echo_gateway, "acme", "service:tester")
    async with httpx.AsyncClient(
        base_url=echo_gateway.base_url, headers=bearer(key.secret), timeout=30
    ) as http:
        yield http


async def test_resource_name_templates_and_additional_bindings(client: httpx.AsyncClient) -> None:
    one = await client.get("/api/test/tenants/acme/things/t%201")
    assert one.status_code == 200 and one.json() == {"name": "tenants/acme/things/t 1", "size": "7"}
    deep = await client.get("/api/test/by-path/a/b%2Fc/d")
    assert deep.json()["name"] == "a/b%2Fc/d"  # multi-segment: %2F stays encoded
    assert (await client.get("/api/test/tenants/acme/nothings/x")).status_code == 404
    wrong_method = await client.delete("/api/test/tenants/acme/things/t1")
    assert wrong_method.status_code == 405 and "GET" in wrong_method.headers["allow"]


async def test_field_body_and_response_body(client: httpx.AsyncClient) -> None:
    reply = await client.patch(
        "/api/test/tenants/acme/things/t1",
        json={"name": "ignored", "size": "12", "tags": ["a"], "state": "STATE_ON"},
    )
    assert reply.status_code == 200
    # The path wins over the body for the same field; only `thing` is returned.
    assert reply.json() == {
        "name": "tenants/acme/things/t1",
        "size": "12",
        "tags": ["a"],
        "state": "STATE_ON",
    }


async def test_star_body_with_path_variable_and_verb(client: httpx.AsyncClient) -> None:
    reply = await client.post("/api/test/echo/e1:shout", json={"text": "hi", "id": "other"})
    assert reply.status_code == 200
    assert json.loads(reply.json()["request"]) == {"id": "e1", "text": "hi"}


async def test_query_parameters(client: httpx.AsyncClient) -> None:
    reply = await client.get(
        "/api/test/search",
        params=[
            ("query", "x"),
            ("tags", "a"),
            ("tags", "b"),
            ("filter.state", "STATE_ON"),
            ("filter.owner", "bob"),
            ("exact", "true"),
            ("limit", "5"),
            ("since", "2026-01-02T03:04:05Z"),
        ],
    )
    assert reply.status_code == 200, reply.text
    assert json.loads(reply.json()["request"]) == {
        "query": "x",
        "tags": ["a", "b"],
        "filter": {"state": "STATE_ON", "owner": "bob"},
        "exact": True,
        "limit": "5",
        "since": "2026-01-02T03:04:05Z",
    }


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("nope=1", "no such query parameter"),
        ("filter=x", "a message cannot be a query parameter"),
        ("query=a&query=b", "given more than once"),
        ("limit=ten", "limit"),
        ("filter.state=STATE_BOGUS", "STATE_BOGUS"),
        ("exact=maybe", "exact"),
    ],
)
async def test_bad_query_parameters_are_400_with_field_violations(
    client: httpx.AsyncClient, query: str, why: str
) -> None:
    reply = await client.get(f"/api/test/search?{query}")
    assert reply.status_code == 400
    body = reply.json()
    assert body["code"] == 3 and why in json.dumps(body)
    assert any(d["@type"].endswith("google.rpc.BadRequest") for d in body["details"])


@pytest.mark.parametrize(
    "body",
    [b"{", b"[1]", b'"text"', b'{"text": 5}', b'{"unknown": 1}', b"\xff\xfe", b"[" * 5000],
)
async def test_bad_bodies_are_400(client: httpx.AsyncClient, body: bytes) -> None:
    reply = await client.post("/api/test/echo/e1:shout", content=body)
    assert reply.status_code == 400 and reply.json()["code"] == 3


async def test_errors_keep_their_details(client: httpx.AsyncClient) -> None:
    reply = await client.get("/api/test/tenants/acme/things/missing")
    assert reply.status_code == 404
    body = reply.json()
    assert body["code"] == 5 and body["message"] == "tenants/acme/things/missing not found"
    assert body["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"


async def test_deadline_from_grpc_timeout_header(client: httpx.AsyncClient) -> None:
    slow = await client.post(
        "/api/test/echo/e1:shout", json={"sleepMs": 2000}, headers={"grpc-timeout": "100m"}
    )
    assert slow.status_code == 504 and slow.json()["code"] == 4
    bad = await client.post("/api/test/echo/e1:shout", json={}, headers={"grpc-timeout": "soon"})
    assert bad.status_code == 400


async def test_identity_request_id_and_trace_context_reach_the_service(
    client: httpx.AsyncClient,
) -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"
    reply = await client.post(
        "/api/test/echo/e1:shout",
        json={},
        headers={
            "x-request-id": "req-42",
            "traceparent": f"00-{trace}-b7ad6b7169203331-01",
            "tracestate": "vendor=1",
            "x-mc-tenant": "victim",
            "x-mc-principal": "operator:mallory",
        },
    )
    seen = reply.json()["metadata"]
    assert seen["x-mc-tenant"] == "acme" and seen["x-mc-principal"] == "service:tester"
    assert seen["x-request-id"] == "req-42" and reply.headers["x-request-id"] == "req-42"
    version, trace_id, parent, flags = seen["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", trace, "01") and parent != "b7ad6b7169203331"
    assert seen["tracestate"] == "vendor=1"
    fresh = (await client.post("/api/test/echo/e1:shout", json={})).json()["metadata"]
    assert len(fresh["x-request-id"]) == 32 and fresh["traceparent"].startswith("00-")


async def test_server_streaming_as_ndjson_and_sse(client: httpx.AsyncClient) -> None:
    reply = await client.get("/api/test/tenants/acme/things:watch", params={"count": 3})
    assert reply.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in reply.text.splitlines()]
    assert [line["result"]["name"] for line in lines] == [
        f"tenants/acme/things/t{i}" for i in range(3)
    ]
    failing = await client.get(
        "/api/test/tenants/acme/things:watch", params={"count": 3, "failAfterFirst": "true"}
    )
    lines = [json.loads(line) for line in failing.text.splitlines()]
    assert "result" in lines[0] and lines[1]["error"]["code"] == 5 and len(lines) == 2
    sse = await client.get(
        "/api/test/tenants/acme/things:watch",
        params={"count": 2},
        headers={"accept": "text/event-stream"},
    )
    assert sse.headers["content-type"].startswith("text/event-stream")
    events = [e for e in sse.text.split("\n\n") if e]
    assert len(events) == 2 and events[0].startswith("data: {")
