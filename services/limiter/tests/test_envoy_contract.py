"""Envoy's RLS contract, hardened: every descriptor decided on its own, bounded linear work,
injective counter keys, per-descriptor limit overrides, capacity denials that still carry
their limit, and IETF RateLimit headers.

Requests are encoded and responses decoded by `envoy-data-plane` (Envoy's own protos, not
MC's stubs) over a raw gRPC channel; headers are parsed by `http-sf` (an independent RFC 9651
parser). Everything runs against the machine's Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import http_sf
import pytest
from envoy_data_plane.envoy.extensions.common.ratelimit.v3 import (
    RateLimitDescriptor,
    RateLimitDescriptorEntry,
    RateLimitDescriptorRateLimitOverride,
)
from envoy_data_plane.envoy.service.ratelimit.v3 import (
    RateLimitRequest,
    RateLimitResponse,
    RateLimitResponseCode,
    RateLimitResponseRateLimitUnit,
)
from envoy_data_plane.envoy.type.v3 import RateLimitUnit
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envoy.service.ratelimit.v3 import rls_pb2 as rls
from mc.limiter.v1 import limiter_pb2 as pb
from mc.limiter.v1 import limiter_service_pb2 as svc
from mc.limiter.v1 import limiter_service_pb2_grpc as svc_grpc
from mc_common.server import start_server
from mc_common.testing.identity import TestTrustDomain
from mc_limiter.app import LimiterApp
from mc_limiter.envoy_rls import MAX_DESCRIPTORS, RateLimitServicer
from mc_limiter.settings import LimiterSettings

METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
OPERATOR = (("x-mc-principal", "operator:ops"),)
OK = RateLimitResponseCode.OK
OVER = RateLimitResponseCode.OVER_LIMIT

Serve = Callable[..., Awaitable[tuple[grpc.aio.Channel, LimiterApp]]]


def gcra_rule(rule_id: str, key: str, limit: int, window_ms: int = 1000) -> pb.Rule:
    return pb.Rule(
        id=rule_id,
        scope=pb.RULE_SCOPE_KEY,
        key=key,
        limits=[
            pb.Limit(
                name="per-window",
                algorithm=pb.ALGORITHM_TOKEN_BUCKET,
                limit=limit,
                window_ms=window_ms,
            )
        ],
    )


@pytest.fixture
async def serve(
    redis_server_url: str, redis_prefix: str, mc_trust_domain: TestTrustDomain
) -> AsyncIterator[Serve]:
    """Starts a limiter (settings overridable) with the rules given; yields a channel."""
    stops: list[Callable[[], Awaitable[None]]] = []

    async def start(*rules: pb.Rule, **overrides: Any) -> tuple[grpc.aio.Channel, LimiterApp]:
        settings = LimiterSettings(
            redis_urls=[redis_server_url],
            key_prefix=f"{redis_prefix}rl",
            fairshare_key_prefix=f"{redis_prefix}fs",
            **overrides,
        )
        app = await LimiterApp.create(settings)
        running = await start_server(settings, app.spec())
        channel = mc_trust_domain.channel(running.address)  # the front door's SVID
        stub = svc_grpc.LimiterServiceStub(channel)
        for rule in rules:
            await stub.PutRule(svc.PutRuleRequest(rule=rule), metadata=OPERATOR)

        async def stop() -> None:
            await channel.close()
            await running.stop(0)
            await app.close()

        stops.append(stop)
        return channel, app

    yield start
    for stop in stops:
        await stop()


async def should_rate_limit(
    channel: grpc.aio.Channel, request: RateLimitRequest
) -> RateLimitResponse:
    call = channel.unary_unary(METHOD)  # no serializers: raw bytes both ways
    raw: bytes = await call(bytes(request))
    return RateLimitResponse().parse(raw)


def entries(*pairs: tuple[str, str]) -> list[RateLimitDescriptorEntry]:
    return [RateLimitDescriptorEntry(key=k, value=v) for k, v in pairs]


def ip(address: str, hits: int | None = None, tenant: str = "acme") -> RateLimitDescriptor:
    return RateLimitDescriptor(
        entries=entries(("tenant", tenant), ("remote_address", address)), hits_addend=hits
    )


async def test_too_many_descriptors_is_a_typed_error_and_the_maximum_is_decided(
    serve: Serve,
) -> None:
    channel, _ = await serve(gcra_rule("edge-per-ip", "edge:remote_address=*", 3))
    over = [ip(f"10.1.{i // 256}.{i % 256}", hits=4) for i in range(MAX_DESCRIPTORS + 1)]
    call = channel.unary_unary(METHOD)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(bytes(RateLimitRequest(domain="edge", descriptors=over)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err.value)  # type: ignore[arg-type]
    assert status is not None and "TOO_MANY_DESCRIPTORS" in str(status.details)
    # The maximum, every descriptor above its capacity: each one is OVER_LIMIT.
    reply = await should_rate_limit(
        channel, RateLimitRequest(domain="edge", descriptors=over[:MAX_DESCRIPTORS])
    )
    assert reply.overall_code == OVER
    assert len(reply.statuses) == MAX_DESCRIPTORS
    assert {s.code for s in reply.statuses} == {OVER}


async def test_work_per_call_does_not_grow_with_over_capacity_descriptors(serve: Serve) -> None:
    """The 19 s call: every descriptor above capacity re-ran the whole batch. Now a call is
    one batch of checks plus one batch of peeks, however many descriptors exceed capacity."""
    _, app = await serve(gcra_rule("edge-per-ip", "edge:remote_address=*", 3))
    calls: list[int] = []
    limiter = app.limiter
    for name in ("check_batch", "check_each"):
        if hasattr(limiter, name):
            original = getattr(limiter, name)

            def spy(requests: Any, *args: Any, _original: Any = original, **kw: Any) -> Any:
                calls.append(len(requests))
                return _original(requests, *args, **kw)

            setattr(limiter, name, spy)
    servicer = RateLimitServicer(limiter)
    request = rls.RateLimitRequest(domain="edge")
    request.ParseFromString(
        bytes(
            RateLimitRequest(
                domain="edge", descriptors=[ip(f"10.2.0.{i}", hits=4) for i in range(200)]
            )
        )
    )
    reply = await servicer.ShouldRateLimit(request, None)
    assert [s.code for s in reply.statuses] == [rls.RateLimitResponse.OVER_LIMIT] * 200
    assert len(calls) <= 2, calls


async def test_an_invalid_descriptor_never_masks_another_over_limit(serve: Serve) -> None:
    """One invalid descriptor used to turn the call into INVALID_ARGUMENT, which Envoy with
    failure_mode_deny: false lets through. Now it gets its domain's policy and the others
    are decided."""
    channel, _ = await serve(
        gcra_rule("edge-per-ip", "edge:remote_address=*", 3),
        gcra_rule("lenient-per-ip", "lenient:remote_address=*", 3),
        envoy_invalid_by_domain={"lenient": "ok"},
    )
    invalid = [
        ip("x" * 5000),  # over-long value
        ip("10.3.0.2", hits=2**40),  # huge hits_addend
        ip("10.3.0.3", tenant="t" * 300),  # over-long tenant
        RateLimitDescriptor(entries=entries(("tenant", "a"), ("tenant", "b"))),  # ambiguous
        RateLimitDescriptor(
            entries=entries(("k", "v")),
            limit=RateLimitDescriptorRateLimitOverride(
                requests_per_unit=0, unit=RateLimitUnit.SECOND
            ),
        ),
    ]
    for domain, policy in (("edge", OVER), ("lenient", OK)):
        hot = RateLimitRequest(domain=domain, descriptors=[ip("10.3.0.1")])
        for _ in range(3):
            assert (await should_rate_limit(channel, hot)).overall_code == OK
        reply = await should_rate_limit(
            channel, RateLimitRequest(domain=domain, descriptors=[*invalid, ip("10.3.0.1")])
        )
        assert [s.code for s in reply.statuses] == [policy] * len(invalid) + [OVER], domain
        assert reply.overall_code == OVER
        assert reply.statuses[-1].current_limit.requests_per_unit == 3


async def test_descriptor_keys_are_injective(serve: Serve) -> None:
    """`a=b/c=d` as one entry and as two entries were one counter."""
    channel, _ = await serve(gcra_rule("edge-any", "edge:*", 1, window_ms=3_600_000))
    one = RateLimitDescriptor(entries=entries(("tenant", "acme"), ("a", "b/c=d")))
    two = RateLimitDescriptor(entries=entries(("tenant", "acme"), ("a", "b"), ("c", "d")))
    for descriptor in (one, two):
        reply = await should_rate_limit(
            channel, RateLimitRequest(domain="edge", descriptors=[descriptor])
        )
        assert reply.overall_code == OK
    again = await should_rate_limit(channel, RateLimitRequest(domain="edge", descriptors=[two]))
    assert again.overall_code == OVER


async def test_hits_above_capacity_carry_the_limit_and_its_reset(serve: Serve) -> None:
    channel, _ = await serve(gcra_rule("edge-per-ip", "edge:remote_address=*", 3))
    await should_rate_limit(channel, RateLimitRequest(domain="edge", descriptors=[ip("10.4.0.1")]))
    reply = await should_rate_limit(
        channel, RateLimitRequest(domain="edge", descriptors=[ip("10.4.0.1", hits=4)])
    )
    status = reply.statuses[0]
    assert status.code == OVER
    assert status.current_limit.requests_per_unit == 3
    assert status.current_limit.unit == RateLimitResponseRateLimitUnit.SECOND
    assert status.limit_remaining == 2
    assert 0 < status.duration_until_reset.total_seconds() <= 1.0


async def test_descriptor_limit_override_replaces_the_rules(serve: Serve) -> None:
    channel, _ = await serve(gcra_rule("edge-per-ip", "edge:remote_address=*", 100))
    override = RateLimitDescriptor(
        entries=entries(("tenant", "acme"), ("remote_address", "10.5.0.1")),
        limit=RateLimitDescriptorRateLimitOverride(requests_per_unit=2, unit=RateLimitUnit.MINUTE),
    )
    request = RateLimitRequest(domain="edge", descriptors=[override])
    codes = [(await should_rate_limit(channel, request)).overall_code for _ in range(3)]
    assert codes == [OK, OK, OVER]
    status = (await should_rate_limit(channel, request)).statuses[0]
    assert status.current_limit.requests_per_unit == 2
    assert status.current_limit.unit == RateLimitResponseRateLimitUnit.MINUTE
    # Unmatched by any rule, the override alone limits.
    alone = RateLimitDescriptor(
        entries=entries(("path", "/x")),
        limit=RateLimitDescriptorRateLimitOverride(requests_per_unit=1, unit=RateLimitUnit.HOUR),
    )
    request = RateLimitRequest(domain="edge", descriptors=[alone])
    codes = [(await should_rate_limit(channel, request)).overall_code for _ in range(2)]
    assert codes == [OK, OVER]
    monthly = RateLimitDescriptor(
        entries=entries(("path", "/m")),
        limit=RateLimitDescriptorRateLimitOverride(requests_per_unit=5, unit=RateLimitUnit.MONTH),
    )
    reply = await should_rate_limit(channel, RateLimitRequest(domain="edge", descriptors=[monthly]))
    assert reply.statuses[0].current_limit.unit == RateLimitResponseRateLimitUnit.MONTH
    assert reply.statuses[0].limit_remaining == 4


async def test_ietf_ratelimit_headers(serve: Serve) -> None:
    channel, _ = await serve(
        gcra_rule("edge-per-ip", "edge:remote_address=*", 3), envoy_headers="ietf"
    )
    request = RateLimitRequest(domain="edge", descriptors=[ip("10.6.0.1")])
    reply = await should_rate_limit(channel, request)
    headers = {h.key: h.value for h in reply.response_headers_to_add}
    policy = http_sf.parse(headers["RateLimit-Policy"].encode(), tltype="list")
    assert policy == [("edge-per-ip/per-window", {"q": 3, "w": 1})]
    current = http_sf.parse(headers["RateLimit"].encode(), tltype="list")
    assert current[0][0] == "edge-per-ip/per-window"
    assert current[0][1]["r"] == 2 and current[0][1]["t"] >= 1
    for _ in range(3):
        reply = await should_rate_limit(channel, request)
    assert reply.overall_code == OVER
    headers = {h.key: h.value for h in reply.response_headers_to_add}
    current = http_sf.parse(headers["RateLimit"].encode(), tltype="list")
    assert current[0][1]["r"] == 0 and current[0][1]["t"] >= 1


async def test_x_ratelimit_headers(serve: Serve) -> None:
    channel, _ = await serve(
        gcra_rule("edge-per-ip", "edge:remote_address=*", 3), envoy_headers="x-ratelimit"
    )
    reply = await should_rate_limit(
        channel, RateLimitRequest(domain="edge", descriptors=[ip("10.7.0.1")])
    )
    headers = {h.key: h.value for h in reply.response_headers_to_add}
    assert headers["X-RateLimit-Limit"] == "3, 3;w=1"
    assert headers["X-RateLimit-Remaining"] == "2"
    limit = http_sf.parse(headers["X-RateLimit-Limit"].encode(), tltype="list")
    assert limit == [(3, {}), (3, {"w": 1})]


_WEIRD = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["tenant", "token", "acme", "a/b=c%:", "x" * 1100, ""]
)
_ENTRY = st.builds(RateLimitDescriptorEntry, key=_WEIRD, value=_WEIRD)
_OVERRIDE = st.builds(
    RateLimitDescriptorRateLimitOverride,
    requests_per_unit=st.integers(0, 2**32 - 1),
    unit=st.sampled_from(list(RateLimitUnit)),
)
_DESCRIPTOR = st.builds(
    RateLimitDescriptor,
    entries=st.lists(_ENTRY, max_size=5),
    hits_addend=st.none() | st.integers(0, 2**64 - 1),
    limit=st.none() | _OVERRIDE,
)
_REQUEST = st.builds(
    RateLimitRequest,
    domain=st.sampled_from(["edge", "", "d" * 200]) | _WEIRD,
    descriptors=st.lists(_DESCRIPTOR, max_size=6),
    hits_addend=st.integers(0, 2**32 - 1),
)


async def test_no_rls_request_gets_internal(serve: Serve) -> None:
    """Generated Envoy requests (encoded by Envoy's own protos): every one is answered with a
    status per descriptor, or INVALID_ARGUMENT for the whole call; never INTERNAL/UNKNOWN."""
    channel, _ = await serve(gcra_rule("edge-per-ip", "edge:remote_address=*", 3))
    seen: list[RateLimitRequest] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_REQUEST)
    def collect(request: RateLimitRequest) -> None:
        seen.append(request)

    collect()
    for request in seen:
        try:
            reply = await should_rate_limit(channel, request)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (request, exc.details())
            assert not request.domain or len(request.domain) > 128 or not request.descriptors
            continue
        assert len(reply.statuses) == len(request.descriptors)
        assert {s.code for s in reply.statuses} <= {OK, OVER}
        assert reply.overall_code == (OVER if OVER in {s.code for s in reply.statuses} else OK)
