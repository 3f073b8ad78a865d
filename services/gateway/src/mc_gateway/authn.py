"""Who is calling: an API key or an OIDC bearer token becomes an `Identity`, or a 401.

Credentials: `Authorization: Bearer <credential>` (an API key when it starts with `mck_`, a
JWT otherwise) or `X-API-Key: mck_...`. The identity is the only source of the tenant and the
principal the gateway sends upstream; nothing the client sends in `x-mc-*` headers is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import Unauthenticated
from mc_common.tenancy import OPERATOR_KIND, Principal
from mc_gateway.apikeys import KeyHasher, looks_like_key, parse_key
from mc_gateway.keycache import KeyCache
from mc_gateway.oidc import TokenError, TokenVerifier

API_KEY_HEADER = "x-api-key"
REALM = "maestro-conductor"


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller."""

    tenant: str | None
    principal: Principal
    credential: str  # "api_key" or "jwt"
    credential_id: str  # the key id, or the token's subject

    @property
    def is_operator(self) -> bool:
        return self.principal.kind == OPERATOR_KIND

    @property
    def rate_limit_token(self) -> str:
        """What per-key limits count by: the key id, or the token's subject."""
        return f"{self.credential}:{self.credential_id}"


class AuthError(Unauthenticated):
    """Missing or bad credentials; carries the `WWW-Authenticate` challenge to answer with."""

    def __init__(self, message: str, *, error: str | None = None) -> None:
        super().__init__(
            message,
            reason=(
                ErrorReason.ERROR_REASON_CREDENTIALS_INVALID
                if error
                else ErrorReason.ERROR_REASON_CREDENTIALS_MISSING
            ),
        )
        challenge = f'Bearer realm="{REALM}"'
        if error:
            description = message.replace("\\", "").replace('"', "'")[:200]
            challenge += f', error="{error}", error_description="{description}"'
        self.challenge = challenge


class Authenticator:
    """Turns request headers into an Identity."""

    def __init__(
        self, keys: KeyCache, hasher: KeyHasher, tokens: TokenVerifier | None = None
    ) -> None:
        self._keys = keys
        self._hasher = hasher
        self._tokens = tokens

    async def authenticate(self, headers: Mapping[str, str]) -> Identity:
        credential = _credential(headers)
        if credential is None:
            raise AuthError("this API needs an API key or a bearer token")
        if looks_like_key(credential):
            return await self._api_key(credential)
        if self._tokens is None:
            raise AuthError("bearer tokens are not accepted here", error="invalid_token")
        try:
            token = await self._tokens.verify(credential)
        except TokenError as exc:
            raise AuthError(str(exc), error="invalid_token") from None
        if token.is_operator:
            principal = Principal(OPERATOR_KIND, token.subject)
        else:
            if token.tenant is None:
                raise AuthError("the token names no tenant", error="invalid_token")
            principal = Principal("user", token.subject)
        return Identity(token.tenant, principal, "jwt", token.subject)

    async def _api_key(self, raw: str) -> Identity:
        key_id = parse_key(raw)
        record = await self._keys.get(key_id) if key_id else None
        if record is None or not self._hasher.matches(raw, record.secret_hash):
            raise AuthError("unknown API key", error="invalid_token")
        if not record.usable_at(datetime.now(UTC)):
            raise AuthError("the API key was revoked or has expired", error="invalid_token")
        return Identity(record.tenant, Principal.parse(record.principal), "api_key", record.key_id)


def _credential(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("use the Bearer scheme", error="invalid_request")
        return value.strip()
    key = headers.get(API_KEY_HEADER)
    return key.strip() if key is not None else None
