"""Declarative rules files end to end: `maestro limiter rules` against a running limiter, and
Envoy RLS requests (encoded by `envoy-data-plane`, not MC's stubs) decided by the file's
descriptor tree, against a real Redis."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from envoy_data_plane.envoy.extensions.common.ratelimit.v3 import (
    RateLimitDescriptor,
    RateLimitDescriptorEntry,
)
from envoy_data_plane.envoy.service.ratelimit.v3 import (
    RateLimitRequest,
    RateLimitResponse,
    RateLimitResponseCode,
)
from google.rpc import error_details_pb2

from maestro_cli.limiter import EXIT_OK, EXIT_REFUSED, apply_rule_files
from mc.limiter.v1 import limiter_service_pb2 as svc
from mc.limiter.v1 import limiter_service_pb2_grpc as svc_grpc
from mc_common.errors import status_details
from mc_common.server import RunningServer, start_server
from mc_common.testing.identity import TestTrustDomain
from mc_limiter.app import LimiterApp
from mc_limiter.app import apply_rule_files as apply_at_start
from mc_limiter.settings import LimiterSettings

METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
OPERATOR = (("x-mc-principal", "operator:ops"),)
OK, OVER = RateLimitResponseCode.OK, RateLimitResponseCode.OVER_LIMIT

EDGE = """\
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: remote_address
    value: 10.9.9.9
  - key: path
    value: /api/*
    rate_limit: {unit: minute, requests_per_unit: 1, name: api}
  - key: path
    value: /api/health
    rate_limit: {unlimited: true}
  - key: path
    value: /vip/*
    rate_limit:
      unit: minute
      requests_per_unit: 5
      replaces: [{name: api}]
  - key: path
    value: /shadow/*
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
"""


@pytest.fixture
async def server(
    redis_server_url: str,
    redis_prefix: str,
    redis_client: object,
    mc_trust_domain: TestTrustDomain,
) -> AsyncIterator[tuple[LimiterApp, RunningServer]]:
    settings = LimiterSettings(
        redis_urls=[redis_server_url],
        key_prefix=f"{redis_prefix}rl",
        fairshare_key_prefix=f"{redis_prefix}fs",
    )
    app = await LimiterApp.create(settings)
    running = await start_server(settings, app.spec())
    yield app, running
    await running.stop(0)
    await app.close()


@dataclass(frozen=True)
class Front:
    """The front door's view of the limiter: its address and the trust domain's SVIDs."""

    address: str
    trust: TestTrustDomain

    def channel(self) -> grpc.aio.Channel:
        """An mTLS channel with the gateway's SVID."""
        return self.trust.channel(self.address)


async def should_rate_limit(front: Front, *descriptors: list[tuple[str, str]]) -> RateLimitResponse:
    request = RateLimitRequest(
        domain="edge",
        descriptors=[
            RateLimitDescriptor(entries=[RateLimitDescriptorEntry(key=k, value=v) for k, v in d])
            for d in descriptors
        ],
    )
    async with front.channel() as ch:
        raw: bytes = await ch.unary_unary(METHOD)(bytes(request))
    return RateLimitResponse().parse(raw)


async def codes(front: Front, *descriptors: list[tuple[str, str]]) -> list[RateLimitResponseCode]:
    reply = await should_rate_limit(front, *descriptors)
    return [s.code for s in reply.statuses]


async def test_cli_diffs_then_applies_and_envoy_semantics_decide(
    server: tuple[LimiterApp, RunningServer], tmp_path: Path, mc_trust_domain: TestTrustDomain
) -> None:
    _, running = server
    rules = tmp_path / "edge.yaml"
    rules.write_text(EDGE)
    out, again = io.StringIO(), io.StringIO()

    def cli() -> list[int]:  # the CLI's blocking client, off this test's event loop
        with mc_trust_domain.sync_channel(running.address) as sync:
            return [
                apply_rule_files(sync, [str(rules)], dry_run=True, out=out),
                apply_rule_files(sync, [str(rules)], out=out),
                apply_rule_files(sync, [str(rules)], dry_run=True, out=again),
            ]

    assert await asyncio.to_thread(cli) == [EXIT_REFUSED, EXIT_OK, EXIT_OK]
    assert "6 added" in out.getvalue() and "applied: revision 1" in out.getvalue()
    assert "no changes" in again.getvalue()
    addr = Front(running.address, mc_trust_domain)
    ip = [("remote_address", "10.0.0.1")]
    assert await codes(addr, ip) == [OK]
    assert await codes(addr, ip) == [OK]
    assert await codes(addr, ip) == [OVER]  # the key alone: 2 a minute for this address
    assert await codes(addr, [("remote_address", "10.0.0.2")]) == [OK]  # counted per value
    for _ in range(3):  # the exact value without a limit overrides the key's default
        assert await codes(addr, [("remote_address", "10.9.9.9")]) == [OK]
    assert await codes(addr, [("path", "/api/a")]) == [OK]
    assert await codes(addr, [("path", "/api/a")]) == [OVER]
    assert await codes(addr, [("path", "/api/health")]) == [OK]
    assert await codes(addr, [("path", "/api/health")]) == [OK]  # exact before wildcard
    # api is replaced while a /vip/ limit is in the same request.
    assert await codes(addr, [("path", "/api/a")], [("path", "/vip/x")]) == [OK, OK]
    assert await codes(addr, [("path", "/shadow/x")]) == [OK]
    assert await codes(addr, [("path", "/shadow/x")]) == [OK]  # shadow: never denies
    assert await codes(addr, [("other", "x")]) == [OK]  # no limit
    assert await codes(addr, [*ip, ("path", "/api/a")]) == [OK]  # deeper than the tree


async def test_invalid_files_are_refused_with_file_and_line(
    server: tuple[LimiterApp, RunningServer], mc_trust_domain: TestTrustDomain
) -> None:
    _, running = server
    async with Front(running.address, mc_trust_domain).channel() as ch:
        stub = svc_grpc.LimiterServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PutDomainConfig(
                svc.PutDomainConfigRequest(
                    source="domain: d\ndescriptors:\n  - key: k\n    ratelimit: {}\n",
                    file_name="bad.yaml",
                ),
                metadata=OPERATOR,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        fields = [
            (v.field, v.description)
            for d in status_details(err.value)
            if isinstance(d, error_details_pb2.BadRequest)
            for v in d.field_violations
        ]
        assert fields == [("bad.yaml:4", "unknown key 'ratelimit' in a descriptor")]
        assert not (
            await stub.ListDomainConfigs(svc.ListDomainConfigsRequest(), metadata=OPERATOR)
        ).configs
        with pytest.raises(grpc.aio.AioRpcError) as err:  # declarative rules stay declarative
            await stub.DeleteRule(svc.DeleteRuleRequest(rule_id="envoy.edge.x"), metadata=OPERATOR)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PutDomainConfig(
                svc.PutDomainConfigRequest(source=EDGE), metadata=(("x-mc-tenant", "acme"),)
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_files_applied_at_start_replace_the_domain_and_reach_other_replicas(
    server: tuple[LimiterApp, RunningServer], tmp_path: Path, mc_trust_domain: TestTrustDomain
) -> None:
    app, running = server
    (tmp_path / "edge.yaml").write_text(EDGE)
    await apply_at_start(app.limiter, [str(tmp_path)])
    stored = app.limiter.declarative("edge")
    assert stored is not None and len(stored.rules()) == 4
    listed = [r.rule.id for r in (await app.limiter.list_rules(page_size=100)).rules]
    assert sorted(listed) == sorted(r.id for r in stored.rules())
    # A changed file replaces the domain: the removed node's rule goes with it.
    (tmp_path / "edge.yaml").write_text(EDGE.split("  - key: path\n    value: /api/*")[0])
    await apply_at_start(app.limiter, [str(tmp_path)])
    assert await codes(Front(running.address, mc_trust_domain), [("path", "/api/a")]) == [OK]
    assert await codes(Front(running.address, mc_trust_domain), [("path", "/api/a")]) == [
        OK
    ]  # no limit any more
    assert len((await app.limiter.list_rules(page_size=100)).rules) == 1
    async with Front(running.address, mc_trust_domain).channel() as ch:
        stub = svc_grpc.LimiterServiceStub(ch)
        got = await stub.GetDomainConfig(
            svc.GetDomainConfigRequest(domain="edge"), metadata=OPERATOR
        )
        assert got.config.revision == 2 and got.config.source.startswith("domain: edge")
        await stub.DeleteDomainConfig(
            svc.DeleteDomainConfigRequest(domain="edge"), metadata=OPERATOR
        )
    assert app.limiter.declarative("edge") is None
    assert not (await app.limiter.list_rules(page_size=100)).rules
