"""PolicyService over real gRPC, with every decision consumed by pql's own consumer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mc.policy.v1 import policy_service_pb2 as svc
from mc.policy.v1 import policy_service_pb2_grpc as svc_grpc
from mc_common.errors import status_details
from mc_common.server import RunningServer, start_server
from mc_common.signing import PemSigner
from mc_common.testing.identity import TestTrustDomain
from mc_edge_policy.app import EdgePolicyApp
from mc_edge_policy.builder import BuiltBundle
from mc_edge_policy.keys import keyring_json
from mc_edge_policy.settings import EdgePolicySettings
from mc_edge_policy.signatures import SigningKey
from mc_pql.app import PqlApp
from mc_pql.settings import PqlSettings

Stub = svc_grpc.PolicyServiceStub


def md(tenant: str) -> list[tuple[str, str]]:
    return [("x-mc-tenant", tenant), ("x-mc-principal", "user:alice")]


def struct(value: dict[str, object]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


@pytest.fixture
def settings_for(
    tmp_path: Path, signing_key: SigningKey, live_bundle: BuiltBundle
) -> Callable[..., EdgePolicySettings]:
    keys = tmp_path / "keys.json"
    keys.write_text(
        keyring_json([{"kid": signing_key.key_id, "pem": signing_key.public_pem().decode()}])
    )
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(live_bundle.archive)

    def make(**overrides: object) -> EdgePolicySettings:
        values: dict[str, object] = {
            "cache_dir": tmp_path / "cache",
            "trusted_keys_file": keys,
            "bundle_file": bundle,
        }
        values.update(overrides)
        return EdgePolicySettings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
async def decisions_topic(
    kafka_bootstrap: str, topic_name: Callable[[str], str], pg_dsn: str, tmp_path: Path
) -> AsyncIterator[tuple[str, PqlApp]]:
    """pql, consuming the topic the PDP publishes to (its consumer is the contract test)."""
    topic = topic_name("mc.policy.decisions")
    key = tmp_path / "pql-key.pem"
    PemSigner.generate().save(key)
    pql = await PqlApp.create(
        PqlSettings(
            postgres_dsn=pg_dsn,
            signing_key_path=key,
            kafka_bootstrap=kafka_bootstrap,
            decisions_topic=topic,
            consumer_group=topic_name("mc-pql"),
        )
    )
    yield topic, pql
    await pql.close()


@pytest.fixture
async def server(
    settings_for: Callable[..., EdgePolicySettings],
    decisions_topic: tuple[str, PqlApp],
    kafka_bootstrap: str,
) -> AsyncIterator[tuple[RunningServer, EdgePolicyApp]]:
    settings = settings_for(kafka_bootstrap=kafka_bootstrap, decisions_topic=decisions_topic[0])
    app = await EdgePolicyApp.create(settings)
    running = await start_server(settings, app.spec())
    yield running, app
    await running.stop(0)
    await app.close()


@pytest.fixture
async def stub(
    server: tuple[RunningServer, EdgePolicyApp], mc_trust_domain: TestTrustDomain
) -> AsyncIterator[Stub]:
    async with mc_trust_domain.channel(server[0].address) as channel:
        yield Stub(channel)


async def wait_for(predicate: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def test_decisions_reach_pql_through_its_own_consumer(
    stub: Stub, decisions_topic: tuple[str, PqlApp], live_bundle: BuiltBundle
) -> None:
    _, pql = decisions_topic
    denied = await stub.Evaluate(
        svc.EvaluateRequest(
            package="mc/residency",
            input=struct({"resource": {"region": "us-east-1"}}),
            execution_id="exec-42",
        ),
        metadata=md("acme"),
    )
    allowed = await stub.Evaluate(
        svc.EvaluateRequest(
            package="mc.residency", input=struct({"resource": {"region": "eu-west-1"}})
        ),
        metadata=md("acme"),
    )
    assert not denied.decision.allow and allowed.decision.allow
    assert denied.decision.bundle_digest == live_bundle.digest

    async def stored() -> bool:
        try:
            await pql.provenance.get_decision("acme", allowed.decision.decision_id)
            await pql.provenance.get_decision("acme", denied.decision.decision_id)
        except Exception:
            return False
        return True

    await wait_for(stored)
    record = await pql.provenance.get_decision("acme", denied.decision.decision_id)
    assert record.rule == "residency.cross_region"
    assert record.execution_id == "exec-42"
    assert record.policy == "mc.residency"
    assert record.bundle_digest == live_bundle.digest
    assert record.remediation.startswith("Run the work in a region")
    assert not record.allow


async def test_enforced_rate_limit_deny_carries_retry_info(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Evaluate(
            svc.EvaluateRequest(
                package="mc/limits",
                input=struct({"limits": {"allow": False, "retryAfterMs": 1500}}),
                enforce=True,
            ),
            metadata=md("acme"),
        )
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = [d for d in status_details(raised.value) if isinstance(d, error_details_pb2.RetryInfo)]
    assert retry[0].retry_delay.seconds == 1 and retry[0].retry_delay.nanos == 500_000_000


async def test_enforced_deny_without_advice_is_permission_denied(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Evaluate(
            svc.EvaluateRequest(
                package="mc/residency",
                input=struct({"resource": {"region": "us-east-1"}}),
                enforce=True,
            ),
            metadata=md("acme"),
        )
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = [d for d in status_details(raised.value) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert info[0].reason == "ERROR_REASON_POLICY_DENIED"


async def test_explain_returns_fired_rules_and_redacted_input(stub: Stub) -> None:
    explained = await stub.Explain(
        svc.ExplainRequest(
            package="mc/residency",
            input=struct(
                {
                    "resource": {"region": "us-east-1"},
                    "password": "hunter2",
                    "caller": {"spiffe_id": "spiffe://mc.local/ns/mc/sa/bundle-signer"},
                }
            ),
        ),
        metadata=md("acme"),
    )
    assert explained.fired_rules[0].rule == "residency.cross_region"
    assert explained.fired_rules[0].remediation
    assert explained.input["password"] == "[REDACTED]"
    assert explained.input["tenant"]["id"] == "acme"
    # The caller is the verified SVID of the connection (the test gateway), not the input's.
    spiffe_id = explained.input["caller"]["spiffe_id"]
    assert spiffe_id.startswith("spiffe://mc.test/") and spiffe_id.endswith("/sa/gateway")


async def test_workload_checks_use_the_peer_svid_not_the_input(stub: Stub) -> None:
    forged = {
        "action": "bundle.publish",
        "caller": {"spiffe_id": "spiffe://mc.local/ns/mc/sa/bundle-signer"},
    }
    response = await stub.Evaluate(
        svc.EvaluateRequest(package="mc/authz", input=struct(forged)), metadata=md("acme")
    )
    assert not response.decision.allow
    assert response.decision.rule == "authz.unknown_workload"


async def test_unknown_package_and_missing_tenant_are_typed(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Evaluate(svc.EvaluateRequest(package="mc/nothing"), metadata=md("acme"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Evaluate(svc.EvaluateRequest(package="mc/residency"))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Evaluate(svc.EvaluateRequest(package="../etc"), metadata=md("acme"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_status_reports_serving(stub: Stub, live_bundle: BuiltBundle) -> None:
    status = await stub.GetPolicyStatus(svc.GetPolicyStatusRequest())
    assert status.state == svc.POLICY_STATE_SERVING
    assert status.bundle_digest == live_bundle.digest and status.bundle_version == 10


async def test_pdp_without_bundle_denies_and_reports_empty(
    settings_for: Callable[..., EdgePolicySettings],
    tmp_path: Path,
    mc_trust_domain: TestTrustDomain,
) -> None:
    settings = settings_for(bundle_file=None, cache_dir=tmp_path / "empty-cache")
    app = await EdgePolicyApp.create(settings)
    running = await start_server(settings, app.spec())
    try:
        async with mc_trust_domain.channel(running.address) as channel:
            stub = Stub(channel)
            status = await stub.GetPolicyStatus(svc.GetPolicyStatusRequest())
            assert status.state == svc.POLICY_STATE_EMPTY
            response = await stub.Evaluate(
                svc.EvaluateRequest(package="mc/residency"), metadata=md("acme")
            )
            assert not response.decision.allow and response.decision.fail_closed
    finally:
        await running.stop(0)
        await app.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=25,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    package=st.sampled_from(["mc/residency", "mc/limits", "mc/authz", "mc/budgets", "mc/privacy"]),
    document=st.dictionaries(st.text(max_size=12), json_values, max_size=6),
)
async def test_any_input_gets_a_typed_answer_and_never_errors(
    stub: Stub, package: str, document: dict[str, object]
) -> None:
    try:
        response = await stub.Evaluate(
            svc.EvaluateRequest(package=package, input=struct(document)), metadata=md("acme")
        )
    except grpc.aio.AioRpcError as error:  # e.g. NUL in keys, refused by request validation
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        return
    assert response.decision.decision_id
    if package == "mc/residency":  # acme's home region is never given by these inputs
        region = document.get("resource")
        if not (isinstance(region, dict) and region.get("region") in ("eu-west-1", "eu-central-1")):
            assert not response.decision.allow


async def test_explain_execution_reads_recorded_decisions_from_pql(
    settings_for: Callable[..., EdgePolicySettings],
    decisions_topic: tuple[str, PqlApp],
    kafka_bootstrap: str,
    mc_trust_domain: TestTrustDomain,
) -> None:
    topic, pql = decisions_topic
    # pql believes edge-policy's tenant (it reads decisions for the tenant it explains).
    pql_settings = pql.settings.model_copy(
        update={
            "identity": mc_trust_domain.settings("pql", tenant_callers=["gateway", "edge-policy"])
        }
    )
    pql_server = await start_server(pql_settings, pql.spec())
    settings = settings_for(
        kafka_bootstrap=kafka_bootstrap,
        decisions_topic=topic,
        pql_address=pql_server.address,
        identity=mc_trust_domain.settings("edge-policy"),
    )
    app = await EdgePolicyApp.create(settings)
    running = await start_server(settings, app.spec())
    try:
        async with mc_trust_domain.channel(running.address, server="edge-policy") as channel:
            stub = Stub(channel)
            for region in ("us-east-1", "eu-west-1"):
                await stub.Evaluate(
                    svc.EvaluateRequest(
                        package="mc/residency",
                        input=struct({"resource": {"region": region}}),
                        execution_id="exec-9",
                    ),
                    metadata=md("acme"),
                )
            request = svc.ExplainExecutionRequest(execution_id="exec-9")

            async def both_recorded() -> bool:
                got = await stub.ExplainExecution(request, metadata=md("acme"))
                return len(got.decisions) == 2

            await wait_for(both_recorded)
            explained = await stub.ExplainExecution(request, metadata=md("acme"))
            denied = next(d for d in explained.decisions if not d.allow)
            assert denied.rule == "residency.cross_region"
            assert denied.title == "Request leaves the tenant's residency group"
            assert denied.remediation.startswith("Run the work in a region")
            assert denied.from_active_bundle
            other = await stub.ExplainExecution(request, metadata=md("beta"))
            assert list(other.decisions) == []  # another tenant sees nothing
    finally:
        await running.stop(0)
        await app.close()
        await pql_server.stop(0)


async def test_oversized_input_is_refused_before_evaluation(stub: Stub) -> None:
    big = {"blob": "x" * (300 * 1024)}
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Evaluate(
            svc.EvaluateRequest(package="mc/residency", input=struct(big)), metadata=md("acme")
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = [
        d for d in status_details(raised.value) if isinstance(d, error_details_pb2.BadRequest)
    ]
    assert violations[0].field_violations[0].field == "input"
