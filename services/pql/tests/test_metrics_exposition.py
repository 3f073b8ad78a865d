"""The provenance service's /metrics passes Prometheus' own linter and uses the gRPC metric
names and labels existing dashboards expect."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from pql_support import md, record

from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc.pql.v1 import query_service_pb2 as q
from mc.pql.v1 import query_service_pb2_grpc as q_grpc
from mc_common.server import start_server
from mc_common.testing.identity import TestTrustDomain
from mc_common.testing.infra import free_port
from mc_common.testing.promtool import promtool_problems
from mc_pql.app import PqlApp
from mc_pql.settings import PqlSettings


async def test_exposition_passes_promtool(
    pql_settings: PqlSettings, mc_trust_domain: TestTrustDomain
) -> None:
    settings = pql_settings.model_copy(update={"metrics_port": free_port()})
    app = await PqlApp.create(settings)
    running = await start_server(settings, app.spec())
    try:
        async with mc_trust_domain.channel(running.address) as channel:
            stub = svc_grpc.ProvenanceServiceStub(channel)
            await stub.RecordReceipt(record("exec-1"), metadata=md("acme"))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetReceipt(svc.GetReceiptRequest(digest="0" * 64), metadata=md("acme"))
            query = q_grpc.QueryServiceStub(channel)
            await query.Query(q.QueryRequest(query="FIND COUNT(receipts)"), metadata=md("acme"))
            async for _ in query.ExportQuery(
                q.ExportQueryRequest(query="FIND receipts"), metadata=md("acme")
            ):
                pass
        url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            exposition = reply.read()
    finally:
        await running.stop(0)
        await app.close()
    assert promtool_problems(exposition) == []
    text = exposition.decode()
    assert (
        'grpc_server_handled_total{grpc_code="NOT_FOUND",grpc_method="GetReceipt",'
        'grpc_service="mc.pql.v1.ProvenanceService",grpc_type="unary"} 1.0' in text
    )
    assert (
        'grpc_server_msg_sent_total{grpc_method="ExportQuery",grpc_service="mc.pql.v1.QueryService"'
        ',grpc_type="server_stream"}' in text
    )
    assert "mc_pql_query_cache_requests_total" in text
    assert "process_resident_memory_bytes" in text
