"""Limits in policy against a real limiter (Redis-backed): usage in input, retry advice out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2

from mc.limiter.v1 import limiter_pb2 as lpb
from mc.limiter.v1 import limiter_service_pb2 as lsvc
from mc.limiter.v1 import limiter_service_pb2_grpc as lsvc_grpc
from mc.policy.v1 import policy_service_pb2 as svc
from mc.policy.v1 import policy_service_pb2_grpc as svc_grpc
from mc_common.errors import status_details
from mc_common.server import RunningServer, start_server
from mc_common.testing.identity import TestTrustDomain
from mc_edge_policy.app import EdgePolicyApp
from mc_edge_policy.builder import BuiltBundle
from mc_edge_policy.keys import keyring_json
from mc_edge_policy.settings import EdgePolicySettings
from mc_edge_policy.signatures import SigningKey
from mc_limiter.app import LimiterApp
from mc_limiter.settings import LimiterSettings

OPERATOR = (("x-mc-principal", "operator:ops"),)


def md(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("x-mc-tenant", tenant),)


@pytest.fixture
async def limiter(
    redis_server_url: str, redis_prefix: str, mc_trust_domain: TestTrustDomain
) -> AsyncIterator[RunningServer]:
    settings = LimiterSettings(
        redis_urls=[redis_server_url],
        key_prefix=f"{redis_prefix}rl",
        fairshare_key_prefix=f"{redis_prefix}fs",
        # The limiter believes edge-policy's tenant (it reads usage for the tenant it judges).
        identity=mc_trust_domain.settings("limiter", tenant_callers=["gateway", "edge-policy"]),
    )
    app = await LimiterApp.create(settings)
    running = await start_server(settings, app.spec())
    async with mc_trust_domain.channel(running.address, server="limiter") as channel:
        rule = lpb.Rule(
            id="runs",
            scope=lpb.RULE_SCOPE_KEY,
            key="executions:*",
            limits=[
                lpb.Limit(
                    name="per-minute",
                    algorithm=lpb.ALGORITHM_TOKEN_BUCKET,
                    limit=1,
                    window_ms=60_000,
                )
            ],
        )
        await lsvc_grpc.LimiterServiceStub(channel).PutRule(
            lsvc.PutRuleRequest(rule=rule), metadata=OPERATOR
        )
    yield running
    await running.stop(0)
    await app.close()


@pytest.fixture
async def pdp_for(
    tmp_path: Path,
    signing_key: SigningKey,
    live_bundle: BuiltBundle,
    mc_trust_domain: TestTrustDomain,
) -> AsyncIterator[Callable[[str], object]]:
    keys = tmp_path / "keys.json"
    keys.write_text(
        keyring_json([{"kid": signing_key.key_id, "pem": signing_key.public_pem().decode()}])
    )
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(live_bundle.archive)
    started: list[tuple[RunningServer, EdgePolicyApp]] = []

    async def start(limiter_address: str) -> svc_grpc.PolicyServiceStub:
        settings = EdgePolicySettings(
            cache_dir=tmp_path / f"cache-{len(started)}",
            trusted_keys_file=keys,
            bundle_file=bundle,
            limiter_address=limiter_address,
            limits_cache_ttl_s=0,
            limits_timeout_s=10,  # a loaded test machine, not the production deadline
            identity=mc_trust_domain.settings("edge-policy"),
        )
        app = await EdgePolicyApp.create(settings)
        running = await start_server(settings, app.spec())
        started.append((running, app))
        channel = mc_trust_domain.channel(running.address, server="edge-policy")
        return svc_grpc.PolicyServiceStub(channel)

    yield start  # type: ignore[misc]
    for running, app in started:
        await running.stop(0)
        await app.close()


def evaluate(key: str, claimed: dict[str, object] | None = None) -> svc.EvaluateRequest:
    document = struct_pb2.Struct()
    document.update({"resource": {"key": key}, **({"limits": claimed} if claimed else {})})
    return svc.EvaluateRequest(package="mc/limits", input=document, enforce=True)


async def test_usage_from_the_limiter_drives_retry_advice(
    limiter: RunningServer, pdp_for: Callable[[str], object], mc_trust_domain: TestTrustDomain
) -> None:
    stub: svc_grpc.PolicyServiceStub = await pdp_for(limiter.address)  # type: ignore[misc]
    allowed = await stub.Evaluate(evaluate("executions:run"), metadata=md("acme"))
    assert allowed.decision.allow
    async with mc_trust_domain.channel(limiter.address, server="limiter") as channel:
        check = await lsvc_grpc.LimiterServiceStub(channel).Check(
            lsvc.CheckRequest(tenant="acme", key="executions:run", cost=1), metadata=md("acme")
        )
        assert check.allowed
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        # Claiming to be under the limit does not help: input.limits comes from the limiter.
        await stub.Evaluate(evaluate("executions:run", {"allow": True}), metadata=md("acme"))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = [d for d in status_details(raised.value) if isinstance(d, error_details_pb2.RetryInfo)]
    assert retry and retry[0].retry_delay.seconds + retry[0].retry_delay.nanos > 0
    other = await stub.Evaluate(evaluate("executions:run"), metadata=md("beta"))
    assert other.decision.allow


async def test_unreachable_limiter_fails_closed(
    pdp_for: Callable[[str], object],
) -> None:
    from mc_common.testing.infra import free_port

    stub: svc_grpc.PolicyServiceStub = await pdp_for(f"127.0.0.1:{free_port()}")  # type: ignore[misc]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Evaluate(evaluate("executions:run", {"allow": True}), metadata=md("acme"))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = [d for d in status_details(raised.value) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert info[0].metadata["rule"] == "limits.usage_unknown"
