"""OIDC bearer tokens: JWS signature against the issuer's JWKS, then iss/aud/exp/nbf.

The JWKS is fetched on first use and kept for `jwks_ttl_s`; a token whose `kid` is not in the
cached set triggers one refetch (at most every `min_refresh_s`), so key rotation at the issuer
needs no restart and unknown kids cannot make us hammer it. Algorithms are pinned: `none` and
anything not configured is refused before any key is used.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

log = logging.getLogger("mc.gateway.oidc")
MAX_TOKEN_BYTES = 16 * 1024


class TokenError(Exception):
    """The token is not acceptable; the message says why (safe to return to the caller)."""


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """Which claims name the tenant, the principal and the roles; which role is an operator.

    Claim names are dotted paths into the claims (`realm_access.roles`).
    """

    tenant: str = "mc_tenant"
    principal: str = "sub"
    roles: str = "roles"
    operator_role: str = "mc-operator"


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What a verified token says about its caller."""

    subject: str
    tenant: str | None
    roles: tuple[str, ...]
    is_operator: bool
    claims: Mapping[str, Any]


class JwksCache:
    """The issuer's key set, fetched over HTTP and refreshed on expiry or an unknown kid."""

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 300.0,
        min_refresh_s: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = url
        self._ttl = ttl_s
        self._min_refresh = min_refresh_s
        self._client = client or httpx.AsyncClient(timeout=5.0)
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def keys(self, kid: str | None) -> KeySet:
        now = time.monotonic()
        stale = now - self._fetched_at >= self._ttl
        unknown = self._keys is not None and kid is not None and not _has_kid(self._keys, kid)
        may_refresh = now - self._fetched_at >= self._min_refresh
        if self._keys is None or stale or (unknown and may_refresh):
            async with self._lock:
                if self._fetched_at <= now:  # nobody refreshed while we waited
                    await self._fetch()
        if self._keys is None:
            raise TokenError("the issuer's keys are unavailable")
        return self._keys

    async def _fetch(self) -> None:
        try:
            response = await self._client.get(self._url)
            response.raise_for_status()
            self._keys = KeySet.import_key_set(response.json())
            self._fetched_at = time.monotonic()
        except (httpx.HTTPError, ValueError, JoseError) as exc:
            log.warning("JWKS fetch failed", extra={"url": self._url, "error": str(exc)})
            self._fetched_at = time.monotonic()  # wait min_refresh_s before trying again

    async def close(self) -> None:
        await self._client.aclose()


class TokenVerifier:
    """Verifies bearer JWTs of one issuer and maps their claims."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks: JwksCache,
        *,
        algorithms: Sequence[str],
        leeway_s: int = 30,
        mapping: ClaimMapping | None = None,
    ) -> None:
        if not algorithms or any(a.lower() == "none" for a in algorithms):
            raise ValueError("configure at least one signing algorithm, and never 'none'")
        self._issuer = issuer
        self._audience = audience
        self._jwks = jwks
        self._algorithms = list(algorithms)
        self._mapping = mapping or ClaimMapping()
        self._registry = jwt.JWTClaimsRegistry(
            leeway=leeway_s,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
        )

    async def verify(self, token: str) -> VerifiedToken:
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("token too large")
        kid = _header_kid(token)
        keys = await self._jwks.keys(kid)
        try:
            decoded = jwt.decode(token, keys, algorithms=self._algorithms)
            self._registry.validate(decoded.claims)
        except JoseError as exc:
            raise TokenError(f"{exc.error}: {exc.description or ''}".rstrip(": ")) from None
        except (ValueError, TypeError, KeyError) as exc:
            raise TokenError(f"malformed token: {exc}") from None
        return self._map(decoded.claims)

    def _map(self, claims: Mapping[str, Any]) -> VerifiedToken:
        m = self._mapping
        subject = _claim(claims, m.principal)
        if not isinstance(subject, str) or not subject:
            raise TokenError(f"claim {m.principal!r} (the principal) is missing")
        tenant = _claim(claims, m.tenant)
        if tenant is not None and not isinstance(tenant, str):
            raise TokenError(f"claim {m.tenant!r} (the tenant) must be a string")
        raw_roles = _claim(claims, m.roles)
        if isinstance(raw_roles, str):
            roles: tuple[str, ...] = tuple(raw_roles.split())
        elif isinstance(raw_roles, list):
            roles = tuple(r for r in raw_roles if isinstance(r, str))
        else:
            roles = ()
        return VerifiedToken(subject, tenant or None, roles, m.operator_role in roles, claims)


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(k.kid == kid for k in keys.keys)


def _header_kid(token: str) -> str | None:
    try:
        header_b64 = token.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenError(f"malformed token header: {exc}") from None
    if not isinstance(header, dict):
        raise TokenError("malformed token header")
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None
