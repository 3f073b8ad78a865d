"""mTLS and peer authorization on a real grpc.aio server: who may call, and what is believed.

Every attack is refused and changes nothing: the servicer below records what reaches it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mc.pql.v1 import provenance_pb2 as pb
from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_common.config import ServiceSettings
from mc_common.errors import status_details
from mc_common.identity import IdentityError, IdentitySettings, WorkloadIdentity
from mc_common.identity.ca import TrustDomainCA
from mc_common.server import RunningServer, ServiceSpec, start_server
from mc_common.tenancy import current_peer, current_principal, require_tenant
from mc_common.testing.identity import TestTrustDomain

SERVICE = svc.DESCRIPTOR.services_by_name["ProvenanceService"].full_name
GATEWAY_ID = "spiffe://mc.test/ns/mc/sa/gateway"


class RecordingServicer(svc_grpc.ProvenanceServiceServicer):
    """Records every call that reaches it, with the peer and tenant it was bound to."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str | None]] = []

    async def GetExecution(self, request, context):  # type: ignore[no-untyped-def]
        tenant = require_tenant()
        self.calls.append(("GetExecution", current_peer(), tenant))
        return svc.GetExecutionResponse(
            execution=pb.Execution(execution_id=request.execution_id, tenant=tenant)
        )

    async def RegisterSigningKey(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append(("RegisterSigningKey", current_peer(), str(current_principal())))
        return svc.RegisterSigningKeyResponse(key=pb.SigningKey(tenant=request.tenant))


async def serve(
    servicer: RecordingServicer, identity: IdentitySettings, **kw: Any
) -> RunningServer:
    spec = ServiceSpec(
        name="test",
        service_names=[SERVICE],
        register=lambda s: svc_grpc.add_ProvenanceServiceServicer_to_server(servicer, s),
    )
    return await start_server(ServiceSettings(identity=identity, **kw), spec)


@pytest.fixture
def servicer() -> RecordingServicer:
    return RecordingServicer()


@pytest.fixture
async def server(
    servicer: RecordingServicer, mc_trust_domain: TestTrustDomain
) -> AsyncIterator[RunningServer]:
    running = await serve(servicer, mc_trust_domain.settings())
    yield running
    await running.stop(0)


def reason(error: grpc.aio.AioRpcError) -> str:
    infos = [d for d in status_details(error) if isinstance(d, error_details_pb2.ErrorInfo)]
    return infos[0].reason


GET = svc.GetExecutionRequest(execution_id="e1")
REGISTER = svc.RegisterSigningKeyRequest(tenant="acme", public_key_pem="k")
AS_TENANT = [("x-mc-tenant", "acme")]
AS_OPERATOR = [("x-mc-principal", "operator:anyone"), ("x-mc-tenant", "acme")]


async def test_gateway_acts_for_a_tenant_and_the_peer_is_in_the_context(
    server: RunningServer, servicer: RecordingServicer, mc_trust_domain: TestTrustDomain
) -> None:
    async with mc_trust_domain.channel(server.address) as channel:
        stub = svc_grpc.ProvenanceServiceStub(channel)
        reply = await stub.GetExecution(GET, metadata=AS_TENANT)
        await stub.RegisterSigningKey(REGISTER, metadata=AS_OPERATOR)
    assert reply.execution.tenant == "acme"
    assert servicer.calls == [
        ("GetExecution", GATEWAY_ID, "acme"),
        ("RegisterSigningKey", GATEWAY_ID, "operator:anyone"),
    ]


async def test_forged_tenant_over_plaintext_never_reaches_the_service(
    server: RunningServer, servicer: RecordingServicer
) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = svc_grpc.ProvenanceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetExecution(GET, metadata=AS_TENANT, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == []


async def test_tls_without_a_client_certificate_is_refused(
    server: RunningServer, servicer: RecordingServicer, mc_trust_domain: TestTrustDomain
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=mc_trust_domain.ca.bundle_pem)
    options = [("grpc.ssl_target_name_override", "test-server.mc.svc")]
    async with grpc.aio.secure_channel(server.address, credentials, options) as channel:
        stub = svc_grpc.ProvenanceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterSigningKey(REGISTER, metadata=AS_OPERATOR, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == []


async def test_forged_operator_from_another_workload_is_denied(
    server: RunningServer,
    servicer: RecordingServicer,
    mc_trust_domain: TestTrustDomain,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A fleet workload with a valid SVID (here `billing`) is not the gateway: it may not act
    as an operator, nor for a tenant unless allow-listed."""
    caplog.set_level(logging.WARNING, logger="mc.identity")
    async with mc_trust_domain.channel(server.address, caller="billing") as channel:
        stub = svc_grpc.ProvenanceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterSigningKey(REGISTER, metadata=AS_OPERATOR)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason(err.value) == "ERROR_REASON_PEER_NOT_ALLOWED"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetExecution(GET, metadata=AS_TENANT)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason(err.value) == "ERROR_REASON_IDENTITY_ASSERTION_NOT_ALLOWED"
        # Internal RPCs are open to every workload of the trust domain.
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # ... but not with an identity it may not assert.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health.Check(health_pb2.HealthCheckRequest(), metadata=AS_TENANT)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert servicer.calls == []
    refusals = [r for r in caplog.records if r.getMessage() == "call refused"]
    assert len(refusals) == 3
    assert {getattr(r, "peer", None) for r in refusals} == {"spiffe://mc.test/ns/mc/sa/billing"}


async def test_allow_listed_fleet_services_act_for_tenants(
    servicer: RecordingServicer, mc_trust_domain: TestTrustDomain
) -> None:
    settings = mc_trust_domain.settings(tenant_callers=["gateway", "billing"])
    running = await serve(servicer, settings)
    try:
        async with mc_trust_domain.channel(running.address, caller="billing") as channel:
            stub = svc_grpc.ProvenanceServiceStub(channel)
            await stub.GetExecution(GET, metadata=AS_TENANT)
            with pytest.raises(grpc.aio.AioRpcError) as err:  # still no operator
                await stub.RegisterSigningKey(REGISTER, metadata=AS_OPERATOR)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await running.stop(0)
    assert servicer.calls == [("GetExecution", "spiffe://mc.test/ns/mc/sa/billing", "acme")]


def foreign_identity(
    tmp_path: Path, ca: TrustDomainCA, trusted_bundle: bytes, spiffe_id: str | None = None
) -> WorkloadIdentity:
    """A client whose SVID `ca` issued and who trusts `trusted_bundle` (to verify the server)."""
    svid = ca.issue("gateway", spiffe_id=spiffe_id)
    directory = tmp_path / "foreign"
    directory.mkdir(exist_ok=True)
    (directory / "svid.pem").write_bytes(svid.chain_pem)
    (directory / "svid_key.pem").write_bytes(svid.key_pem)
    (directory / "svid_bundle.pem").write_bytes(trusted_bundle)
    settings = IdentitySettings(mode="mtls", trust_domain=ca.trust_domain, svid_dir=directory)
    return WorkloadIdentity.from_settings(settings)


@pytest.mark.parametrize("claimed", ["spiffe://evil.test/ns/mc/sa/gateway", GATEWAY_ID])
async def test_certificate_from_another_trust_domain_is_refused(
    server: RunningServer,
    servicer: RecordingServicer,
    mc_trust_domain: TestTrustDomain,
    tmp_path: Path,
    claimed: str,
) -> None:
    """Another CA's SVID never completes the handshake, even one claiming our gateway's ID."""
    evil = TrustDomainCA.generate(claimed.split("/")[2])
    client = foreign_identity(tmp_path, evil, mc_trust_domain.ca.bundle_pem, claimed)
    async with client.channel(server.address, server="test-server") as channel:
        stub = svc_grpc.ProvenanceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterSigningKey(REGISTER, metadata=AS_OPERATOR, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == []


async def test_federated_trust_domain_is_not_a_fleet_caller(
    servicer: RecordingServicer, mc_trust_domain: TestTrustDomain, tmp_path: Path
) -> None:
    """With a partner's CA in our bundle the handshake succeeds, and the ID decides."""
    partner = TrustDomainCA.generate("partner.test")
    server_dir = tmp_path / "server"
    mc_trust_domain.ca.write_svid(server_dir, "test-server", bundle=[partner.bundle_pem])
    running = await serve(servicer, mc_trust_domain.settings(svid_dir=server_dir))
    client = foreign_identity(tmp_path, partner, mc_trust_domain.ca.bundle_pem)
    try:
        async with client.channel(running.address, server="test-server") as channel:
            stub = svc_grpc.ProvenanceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetExecution(GET, metadata=AS_TENANT)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert reason(err.value) == "ERROR_REASON_PEER_NOT_ALLOWED"
            health = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await health.Check(health_pb2.HealthCheckRequest())
    finally:
        await running.stop(0)
    assert servicer.calls == []


async def test_expired_svid_is_refused(
    server: RunningServer,
    servicer: RecordingServicer,
    mc_trust_domain: TestTrustDomain,
    tmp_path: Path,
) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    directory = mc_trust_domain.svid_dir(
        "expired-gateway",
        spiffe_id=GATEWAY_ID,
        not_before=past,
        lifetime=dt.timedelta(hours=1),
    )
    client = WorkloadIdentity.from_settings(mc_trust_domain.settings(svid_dir=directory))
    async with client.channel(server.address, server="test-server") as channel:
        stub = svc_grpc.ProvenanceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterSigningKey(REGISTER, metadata=AS_OPERATOR, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == []


async def test_client_refuses_a_server_with_the_wrong_name(
    server: RunningServer, mc_trust_domain: TestTrustDomain
) -> None:
    """The client checks it reached the workload it meant: test-server is not the limiter."""
    async with mc_trust_domain.channel(server.address, server="limiter") as channel:
        stub = svc_grpc.ProvenanceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetExecution(GET, metadata=AS_TENANT, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_needs_the_dev_flag_and_loopback(
    servicer: RecordingServicer, mc_trust_domain: TestTrustDomain
) -> None:
    dev = IdentitySettings(mode="plaintext-dev", trust_domain="mc.test")
    with pytest.raises(IdentityError, match="loopback"):
        await serve(servicer, dev, grpc_host="0.0.0.0")
    with pytest.raises(IdentityError, match="MC_IDENTITY_SVID_DIR"):
        await serve(servicer, IdentitySettings(mode="mtls", trust_domain="mc.test", svid_dir=None))
    running = await serve(servicer, dev)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = svc_grpc.ProvenanceServiceStub(channel)
            await stub.GetExecution(GET, metadata=AS_TENANT)
    finally:
        await running.stop(0)
    assert servicer.calls == [("GetExecution", GATEWAY_ID, "acme")]
    with pytest.raises(IdentityError, match="loopback"):
        WorkloadIdentity(dev, None).channel("10.0.0.1:7301", server="pql")


async def test_health_port_serves_probes_in_plaintext_and_nothing_else(
    servicer: RecordingServicer, mc_trust_domain: TestTrustDomain
) -> None:
    running = await serve(servicer, mc_trust_domain.settings(), health_port=0)
    try:
        assert running.health_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.health_port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE)
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await svc_grpc.ProvenanceServiceStub(channel).GetExecution(GET, metadata=AS_TENANT)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await running.stop(0)
    assert servicer.calls == []
