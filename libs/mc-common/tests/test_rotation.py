"""The rotation drill: SVIDs and the trust bundle (a whole CA rollover) rotate under load,
without a restart and without one failed call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from mc.pql.v1 import provenance_pb2 as pb
from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_common.config import ServiceSettings
from mc_common.identity import SvidSource, WorkloadIdentity
from mc_common.identity.ca import IssuedSvid, TrustDomainCA, write_svid_files
from mc_common.server import ServiceSpec, start_server
from mc_common.tenancy import require_tenant
from mc_common.testing.identity import TestTrustDomain

SERVICE = svc.DESCRIPTOR.services_by_name["ProvenanceService"].full_name
GET = svc.GetExecutionRequest(execution_id="e1")
AS_TENANT = [("x-mc-tenant", "acme")]
FRESH = [("grpc.use_local_subchannel_pool", 1)]  # a new connection, so a new handshake


class Servicer(svc_grpc.ProvenanceServiceServicer):
    async def GetExecution(self, request, context):  # type: ignore[no-untyped-def]
        return svc.GetExecutionResponse(execution=pb.Execution(tenant=require_tenant()))


async def until(condition: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.02)


async def test_svids_and_bundle_rotate_mid_load_without_a_failed_call(
    mc_trust_domain: TestTrustDomain, tmp_path: Path
) -> None:
    old_ca, new_ca = mc_trust_domain.ca, TrustDomainCA.generate("mc.test")
    server_dir, client_dir = tmp_path / "server", tmp_path / "client"
    server_svid = old_ca.issue("test-server")
    client_svid = old_ca.issue("gateway")
    write_svid_files(server_dir, server_svid, old_ca.bundle_pem)
    write_svid_files(client_dir, client_svid, old_ca.bundle_pem)
    fast = {"reload_interval_s": 0.05}
    spec = ServiceSpec(
        name="test",
        service_names=[SERVICE],
        register=lambda s: svc_grpc.add_ProvenanceServiceServicer_to_server(Servicer(), s),
    )
    running = await start_server(
        ServiceSettings(identity=mc_trust_domain.settings(svid_dir=server_dir, **fast)), spec
    )
    client = WorkloadIdentity.from_settings(mc_trust_domain.settings(svid_dir=client_dir, **fast))
    assert running.identity.source is not None and client.source is not None
    server_source: SvidSource = running.identity.source
    client_source: SvidSource = client.source

    ok = [0]
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def reused_connection() -> None:
        async with client.channel(running.address, server="test-server") as channel:
            stub = svc_grpc.ProvenanceServiceStub(channel)
            while not stop.is_set():
                try:
                    await stub.GetExecution(GET, metadata=AS_TENANT, timeout=10)
                    ok[0] += 1
                except grpc.aio.AioRpcError as error:
                    failures.append(error)

    async def new_connections() -> None:
        while not stop.is_set():
            async with client.channel(running.address, server="test-server", options=FRESH) as ch:
                try:
                    await svc_grpc.ProvenanceServiceStub(ch).GetExecution(
                        GET, metadata=AS_TENANT, timeout=10
                    )
                    ok[0] += 1
                except grpc.aio.AioRpcError as error:
                    failures.append(error)

    def rotate(server: IssuedSvid, client_: IssuedSvid, bundle: bytes) -> None:
        write_svid_files(server_dir, server, bundle)
        write_svid_files(client_dir, client_, bundle)

    async def settled(generation: int) -> None:
        await until(lambda: server_source.generation >= generation, f"server gen {generation}")
        await until(lambda: client_source.generation >= generation, f"client gen {generation}")
        calls = ok[0]
        await until(lambda: ok[0] >= calls + 20, "calls after the step")

    load = [asyncio.create_task(reused_connection()) for _ in range(3)]
    load += [asyncio.create_task(new_connections()) for _ in range(2)]
    try:
        await until(lambda: ok[0] >= 20, "load running")
        both = old_ca.bundle_pem + new_ca.bundle_pem
        rotate(server_svid, client_svid, both)  # 1. trust the new CA beside the old
        await settled(1)
        new_server, new_client = new_ca.issue("test-server"), new_ca.issue("gateway")
        rotate(new_server, new_client, both)  # 2. SVIDs from the new CA
        await settled(2)
        rotate(new_server, new_client, new_ca.bundle_pem)  # 3. retire the old CA
        await settled(3)
    finally:
        stop.set()
        await asyncio.gather(*load, return_exceptions=True)

    try:
        assert failures == []
        assert server_source.spiffe_id == "spiffe://mc.test/ns/mc/sa/test-server"
        # The server now holds the new CA's SVID and trusts only the new CA: an SVID of the
        # retired CA is refused on a new connection.
        stale_dir = tmp_path / "stale"
        write_svid_files(stale_dir, old_ca.issue("gateway"), new_ca.bundle_pem)
        stale = WorkloadIdentity.from_settings(mc_trust_domain.settings(svid_dir=stale_dir))
        async with stale.channel(running.address, server="test-server", options=FRESH) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await svc_grpc.ProvenanceServiceStub(ch).GetExecution(
                    GET, metadata=AS_TENANT, timeout=5
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop(0)
