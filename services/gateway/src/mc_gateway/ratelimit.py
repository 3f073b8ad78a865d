"""Rate limiting at the door: one limiter `Check` per request, per tenant and per credential.

The gateway spends one unit of `rate_limit_key` for the caller's tenant with the caller's
credential as the token, so limiter rules scoped `RULE_SCOPE_TENANT` limit a tenant and rules
scoped `RULE_SCOPE_TOKEN` limit each API key (or token subject) of it. The answer carries the
IETF `RateLimit` / `RateLimit-Policy` headers (draft-ietf-httpapi-ratelimit-headers) for the
limit closest to denying, and a denial is a 429 with `Retry-After`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import grpc

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc.limiter.v1 import limiter_pb2
from mc.limiter.v1 import limiter_service_pb2 as lsvc
from mc.limiter.v1 import limiter_service_pb2_grpc as lgrpc
from mc_common.errors import QuotaViolation, ResourceExhausted, Unavailable
from mc_common.tenancy import PRINCIPAL_HEADER, TENANT_HEADER
from mc_gateway.authn import Identity

log = logging.getLogger("mc.gateway.ratelimit")
GATEWAY_PRINCIPAL = "service:mc-gateway"


@dataclass(frozen=True, slots=True)
class Decision:
    """The limiter's answer, as response headers."""

    allowed: bool
    headers: dict[str, str] = field(default_factory=dict)
    retry_after_ms: int = 0


class DoorLimiter:
    """Asks the limiter whether a caller may make one more request."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        key: str,
        timeout_s: float,
        fail_open: bool,
    ) -> None:
        self._stub = lgrpc.LimiterServiceStub(channel)
        self._key = key
        self._timeout = timeout_s
        self._fail_open = fail_open

    async def check(self, identity: Identity) -> Decision:
        tenant = identity.tenant
        if tenant is None:  # operators without a tenant are not limited at the door
            return Decision(True)
        request = lsvc.CheckRequest(
            tenant=tenant, token=identity.rate_limit_token, key=self._key, cost=1
        )
        metadata = ((TENANT_HEADER, tenant), (PRINCIPAL_HEADER, GATEWAY_PRINCIPAL))
        try:
            reply = await self._stub.Check(request, metadata=metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            log.warning("limiter check failed: %s %s", exc.code().name, exc.details())
            if self._fail_open:
                return Decision(True)
            raise Unavailable(
                "rate limiting is unavailable", reason=ErrorReason.ERROR_REASON_LIMITER_UNAVAILABLE
            ) from None
        return _decision(reply)


def _decision(reply: lsvc.CheckResponse) -> Decision:
    enforced = [s for s in reply.limits if not s.shadow]
    headers: dict[str, str] = {}
    if enforced:
        # The limit closest to denying is the one a client should pace itself by.
        tightest = min(enforced, key=lambda s: (s.allowed, s.remaining))
        headers = rate_limit_headers(enforced, tightest)
    retry_ms = int(reply.retry_after_ms)
    if not reply.allowed:
        headers["Retry-After"] = str(max(1, math.ceil(retry_ms / 1000)))
    return Decision(reply.allowed, headers, retry_ms)


def rate_limit_headers(
    limits: list[limiter_pb2.LimitStatus], tightest: limiter_pb2.LimitStatus
) -> dict[str, str]:
    """`RateLimit-Policy` lists every enforced limit (quota `q`); `RateLimit` reports the
    tightest one's remaining units `r` and seconds `t` until it is replenished."""
    policies = ", ".join(f'"{_policy_name(s)}";q={s.limit}' for s in limits)
    reset_s = math.ceil(tightest.reset_after_ms / 1000)
    remaining = 0 if not tightest.allowed else tightest.remaining
    return {
        "RateLimit-Policy": policies,
        "RateLimit": f'"{_policy_name(tightest)}";r={remaining};t={reset_s}',
    }


def _policy_name(status: limiter_pb2.LimitStatus) -> str:
    # Structured-field strings allow printable ASCII except '"' and '\'.
    name = f"{status.rule_id}/{status.limit_name}"
    return "".join(c for c in name if 0x20 <= ord(c) < 0x7F and c not in '"\\')


def denial(decision: Decision) -> ResourceExhausted:
    return ResourceExhausted(
        "rate limit exceeded at the gateway",
        retry_after_ms=decision.retry_after_ms,
        violations=[QuotaViolation("gateway", "too many requests; see Retry-After")],
    )
