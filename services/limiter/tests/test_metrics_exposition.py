"""The limiter's /metrics passes Prometheus' own linter (base units, gRPC names and labels)."""

from __future__ import annotations

import urllib.request

from test_service import OPERATOR, md, rule, start_limiter

from mc.limiter.v1 import limiter_service_pb2 as svc
from mc.limiter.v1 import limiter_service_pb2_grpc as svc_grpc
from mc_common.testing.identity import TestTrustDomain
from mc_common.testing.infra import free_port
from mc_common.testing.promtool import promtool_problems
from mc_limiter.settings import LimiterSettings


async def test_exposition_passes_promtool(
    redis_server_url: str, redis_prefix: str, redis_client: object, mc_trust_domain: TestTrustDomain
) -> None:
    settings = LimiterSettings(
        redis_urls=[redis_server_url],
        key_prefix=f"{redis_prefix}rl",
        fairshare_key_prefix=f"{redis_prefix}fs",
        metrics_port=free_port(),
    )
    app, running = await start_limiter(settings)
    try:
        async with mc_trust_domain.channel(running.address) as channel:
            stub = svc_grpc.LimiterServiceStub(channel)
            await stub.PutRule(svc.PutRuleRequest(rule=rule()), metadata=OPERATOR)
            for _ in range(7):  # the rule allows 5 a minute: some are denied
                await stub.Check(
                    svc.CheckRequest(tenant="acme", key="executions:start", cost=1),
                    metadata=md("acme"),
                )
        url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            exposition = reply.read()
    finally:
        await running.stop(0)
        await app.close()
    assert promtool_problems(exposition) == []
    text = exposition.decode()
    assert 'mc_rl_check_seconds_bucket{le="0.001",path="redis"}' in text
    assert (
        'grpc_server_handled_total{grpc_code="OK",grpc_method="Check",'
        'grpc_service="mc.limiter.v1.LimiterService",grpc_type="unary"} 7.0' in text
    )
