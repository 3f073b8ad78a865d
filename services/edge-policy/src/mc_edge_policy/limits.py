"""Limits in policy: the caller's current usage from the limiter's GetUsage, cached briefly.

The PDP puts it in `input.limits` (`allow`, `retryAfterMs`, `remaining`, `limits`), replacing
anything the request carried there: a caller cannot vouch for its own usage. When the limiter
does not answer in time, `input.limits` is absent, and the `mc.limits` policy denies.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from mc.limiter.v1 import limiter_service_pb2 as limiter_svc
from mc.limiter.v1 import limiter_service_pb2_grpc as limiter_grpc

DEFAULT_KEY = "default"


class UsageSource(Protocol):
    """Where `input.limits` comes from."""

    async def usage(self, tenant: str, key: str) -> dict[str, Any] | None: ...


def usage_document(response: limiter_svc.GetUsageResponse) -> dict[str, Any]:
    """The `input.limits` document of a GetUsage response."""
    enforced = [s for s in response.limits if not s.shadow]
    denied = [s for s in enforced if not s.allowed]
    document: dict[str, Any] = {
        "allow": not denied,
        "limits": [
            {
                "rule": s.rule_id,
                "name": s.limit_name,
                "allowed": s.allowed,
                "remaining": s.remaining,
                "limit": s.limit,
                "retryAfterMs": s.retry_after_ms,
                "shadow": s.shadow,
            }
            for s in response.limits
        ],
    }
    if denied:
        document["retryAfterMs"] = max(s.retry_after_ms for s in denied)
    if enforced:
        document["remaining"] = min(s.remaining for s in enforced)
    return document


class LimiterUsage:
    """GetUsage over one channel, with a small TTL cache per (tenant, key)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        ttl_s: float = 0.5,
        timeout_s: float = 0.25,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = limiter_grpc.LimiterServiceStub(channel)
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], tuple[float, dict[str, Any]]] = OrderedDict()
        self.calls = 0

    async def usage(self, tenant: str, key: str) -> dict[str, Any] | None:
        now = self._clock()
        cached = self._cache.get((tenant, key))
        if cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        self.calls += 1
        try:
            response = await self._stub.GetUsage(
                limiter_svc.GetUsageRequest(tenant=tenant, key=key),
                metadata=(("x-mc-tenant", tenant),),
                timeout=self._timeout_s,
            )
        except grpc.aio.AioRpcError:
            return None
        document = usage_document(response)
        self._cache[(tenant, key)] = (now, document)
        self._cache.move_to_end((tenant, key))
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return document


def limits_key(input_document: dict[str, Any]) -> str:
    """The limiter key a request is about: `input.resource.key`, else `default`."""
    resource = input_document.get("resource")
    key = resource.get("key") if isinstance(resource, dict) else None
    return key if isinstance(key, str) and 0 < len(key) <= 256 else DEFAULT_KEY


async def with_limits(
    source: UsageSource, tenant: str, input_document: dict[str, Any]
) -> dict[str, Any]:
    """The input with `limits` from the limiter (absent when it did not answer)."""
    enriched = {k: v for k, v in input_document.items() if k != "limits"}
    usage = await source.usage(tenant, limits_key(input_document))
    if usage is not None:
        enriched["limits"] = usage
    return enriched
