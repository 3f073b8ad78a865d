"""Envoy RLS v3 wire compatibility, proven with bytes from an independent encoder.

The requests are encoded and the responses decoded by `envoy-data-plane` (betterproto classes
generated from Envoy's own protos), never by MC's stubs; the call goes over a raw gRPC channel
with bytes in and bytes out, exactly what an Envoy rate-limit filter sends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

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
    RateLimitResponseRateLimitUnit,
)
from google.rpc.error_details_pb2 import ErrorInfo

from mc.limiter.v1 import limiter_pb2 as pb
from mc.limiter.v1 import limiter_service_pb2 as svc
from mc.limiter.v1 import limiter_service_pb2_grpc as svc_grpc
from mc_common.errors import status_details
from mc_common.server import start_server
from mc_common.testing.identity import TestTrustDomain
from mc_limiter.app import LimiterApp
from mc_limiter.settings import LimiterSettings

METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
OPERATOR = (("x-mc-principal", "operator:ops"),)


@pytest.fixture
async def rls_address(
    redis_server_url: str,
    redis_prefix: str,
    redis_client: object,
    mc_trust_domain: TestTrustDomain,
) -> AsyncIterator[str]:
    settings = LimiterSettings(
        redis_urls=[redis_server_url],
        key_prefix=f"{redis_prefix}rl",
        fairshare_key_prefix=f"{redis_prefix}fs",
    )
    app = await LimiterApp.create(settings)
    running = await start_server(settings, app.spec())
    async with mc_trust_domain.channel(running.address) as ch:
        await svc_grpc.LimiterServiceStub(ch).PutRule(
            svc.PutRuleRequest(
                rule=pb.Rule(
                    id="edge-per-ip",
                    scope=pb.RULE_SCOPE_KEY,
                    key="edge:remote_address=*",
                    limits=[
                        pb.Limit(
                            name="per-second",
                            algorithm=pb.ALGORITHM_TOKEN_BUCKET,
                            limit=3,
                            window_ms=1000,
                        )
                    ],
                )
            ),
            metadata=OPERATOR,
        )
    yield running.address
    await running.stop(0)
    await app.close()


@pytest.fixture
async def channel(
    rls_address: str, mc_trust_domain: TestTrustDomain
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel of the front door (the gateway's SVID)."""
    async with mc_trust_domain.channel(rls_address) as ch:
        yield ch


async def should_rate_limit(
    channel: grpc.aio.Channel, request: RateLimitRequest
) -> RateLimitResponse:
    call = channel.unary_unary(METHOD)  # no serializers: raw bytes both ways
    raw: bytes = await call(bytes(request))
    return RateLimitResponse().parse(raw)


def descriptor(ip: str, hits: int | None = None) -> RateLimitDescriptor:
    return RateLimitDescriptor(
        entries=[
            RateLimitDescriptorEntry(key="tenant", value="acme"),
            RateLimitDescriptorEntry(key="remote_address", value=ip),
        ],
        hits_addend=hits,
    )


async def test_over_limit_after_the_limit(channel: grpc.aio.Channel) -> None:
    request = RateLimitRequest(domain="edge", descriptors=[descriptor("10.0.0.1")])
    codes = [(await should_rate_limit(channel, request)).overall_code for _ in range(4)]
    assert codes == [RateLimitResponseCode.OK] * 3 + [RateLimitResponseCode.OVER_LIMIT]
    reply = await should_rate_limit(channel, request)
    status = reply.statuses[0]
    assert status.code == RateLimitResponseCode.OVER_LIMIT
    assert status.current_limit.requests_per_unit == 3
    assert status.current_limit.unit == RateLimitResponseRateLimitUnit.SECOND
    assert status.limit_remaining == 0
    assert 0 < status.duration_until_reset.total_seconds() <= 1.0


async def test_hits_addend_per_descriptor_and_request(channel: grpc.aio.Channel) -> None:
    # The descriptor's own hits_addend wins over the request's.
    big = RateLimitRequest(
        domain="edge", descriptors=[descriptor("10.0.0.2", hits=3)], hits_addend=1
    )
    assert (await should_rate_limit(channel, big)).overall_code == RateLimitResponseCode.OK
    again = RateLimitRequest(domain="edge", descriptors=[descriptor("10.0.0.2")], hits_addend=1)
    assert (
        await should_rate_limit(channel, again)
    ).overall_code == RateLimitResponseCode.OVER_LIMIT
    # The request's hits_addend applies to descriptors without one.
    fresh = RateLimitRequest(domain="edge", descriptors=[descriptor("10.0.0.3")], hits_addend=2)
    reply = await should_rate_limit(channel, fresh)
    assert reply.overall_code == RateLimitResponseCode.OK
    assert reply.statuses[0].limit_remaining == 1


async def test_unmatched_descriptors_are_ok_and_any_over_limit_wins(
    channel: grpc.aio.Channel,
) -> None:
    unknown = RateLimitDescriptor(entries=[RateLimitDescriptorEntry(key="path", value="/x")])
    request = RateLimitRequest(domain="edge", descriptors=[unknown, descriptor("10.0.0.4", hits=4)])
    reply = await should_rate_limit(channel, request)
    assert [s.code for s in reply.statuses] == [
        RateLimitResponseCode.OK,
        RateLimitResponseCode.OVER_LIMIT,
    ]
    assert reply.overall_code == RateLimitResponseCode.OVER_LIMIT


async def test_malformed_bytes_are_rejected(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary(METHOD)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(b"\xff\xff\xff")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(bytes(RateLimitRequest(domain="", descriptors=[descriptor("1.1.1.1")])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_only_the_front_door_may_ask(
    channel: grpc.aio.Channel, rls_address: str, mc_trust_domain: TestTrustDomain
) -> None:
    """Another workload of the trust domain (here `pql`) may not spend anyone's limits."""
    request = RateLimitRequest(domain="edge", descriptors=[descriptor("10.0.0.9")])
    async with mc_trust_domain.channel(rls_address, caller="pql") as other:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await should_rate_limit(other, request)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = [d for d in status_details(err.value) if isinstance(d, ErrorInfo)]
    assert info[0].reason == "ERROR_REASON_PEER_NOT_ALLOWED"
    # The refused call spent nothing: the front door still gets all three.
    codes = [(await should_rate_limit(channel, request)).overall_code for _ in range(4)]
    assert codes == [RateLimitResponseCode.OK] * 3 + [RateLimitResponseCode.OVER_LIMIT]
