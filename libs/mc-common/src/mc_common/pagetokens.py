"""Opaque, authenticated page tokens, bound to the tenant, the listing and its filter.

A List RPC hands out `next_page_token`; the client may only give it back unchanged to the
same listing, for the same tenant, with the same filter. Anything else (a forged position, a
token of another tenant or listing, another filter, a token from an unknown key) is
`INVALID_ARGUMENT` on `page_token`, so a position read back from a token can be trusted to
have been written by this service (see docs/adr/0031-page-tokens.md).

A token is `base64url(version | position JSON | HMAC-SHA256 tag)`. The tag covers the version,
the position and the binding (tenant, listing, canonical filter), which travel only in the
tag. Keys come from settings as a list: the first signs, every one verifies, so a key is
rotated by prepending the new one and dropping the old one after the longest page walk.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Final

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import FieldViolation, InvalidArgument

Position = list[str | int]
"""Where a listing resumes: the sort key of the last item served (strings and integers)."""

_VERSION: Final = b"\x01"
_TAG_BYTES: Final = 16  # 128-bit HMAC-SHA256 truncation (RFC 2104 sec. 5; NIST SP 800-107)
MIN_KEY_BYTES: Final = 16
MAX_POSITION_BYTES: Final = 256
"""Longest position JSON accepted; keeps tokens under the 512-character proto bound."""


class PageTokenError(InvalidArgument):
    """The page token is not one this listing issued for this caller and filter."""

    def __init__(self, field: str = "page_token") -> None:
        description = "not a page token of this listing (tokens are bound to tenant and filter)"
        super().__init__(
            f"{field}: {description}",
            [FieldViolation(field, description)],
            reason=ErrorReason.ERROR_REASON_PAGE_TOKEN_INVALID,
        )


class PageTokens:
    """Issues and checks page tokens with HMAC keys (`keys[0]` signs; all of them verify)."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one page token key is required")
        for key in keys:
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"page token keys need at least {MIN_KEY_BYTES} bytes")
        self._keys = [bytes(k) for k in keys]

    @classmethod
    def derived(cls, secret: bytes, *extra: bytes) -> PageTokens:
        """Keys derived from a service secret (e.g. its signing key) and older secrets."""
        return cls([_derive(s) for s in (secret, *extra)])

    def issue(
        self,
        position: Position,
        *,
        tenant: str,
        listing: str,
        filters: Mapping[str, str | int] | None = None,
    ) -> str:
        """The token that resumes `listing` after `position` for `tenant` and `filters`."""
        body = json.dumps(position, separators=(",", ":"), ensure_ascii=True).encode()
        if len(body) > MAX_POSITION_BYTES:
            raise ValueError("page position too long for a token")
        tag = _tag(self._keys[0], body, tenant, listing, filters)
        return base64.urlsafe_b64encode(_VERSION + body + tag).decode().rstrip("=")

    def open(
        self,
        token: str,
        *,
        tenant: str,
        listing: str,
        filters: Mapping[str, str | int] | None = None,
        field: str = "page_token",
    ) -> Position | None:
        """The position `token` resumes after; None for an empty token (the first page).

        Raises:
            PageTokenError: the token was not issued by this service for exactly this tenant,
                listing and filters, or is malformed.
        """
        if not token:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError) as exc:
            raise PageTokenError(field) from exc
        if len(raw) <= 1 + _TAG_BYTES or raw[:1] != _VERSION:
            raise PageTokenError(field)
        body, tag = raw[1:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if not any(
            hmac.compare_digest(tag, _tag(key, body, tenant, listing, filters))
            for key in self._keys
        ):
            raise PageTokenError(field)
        try:
            position = json.loads(body)
        except ValueError as exc:  # only a token we signed gets here: a bug, but typed
            raise PageTokenError(field) from exc
        if not isinstance(position, list) or not all(
            isinstance(p, str | int) and not isinstance(p, bool) for p in position
        ):
            raise PageTokenError(field)
        return position


def _derive(secret: bytes) -> bytes:
    return hmac.new(secret, b"mc.page-token.v1", hashlib.sha256).digest()


def _tag(
    key: bytes,
    body: bytes,
    tenant: str,
    listing: str,
    filters: Mapping[str, str | int] | None,
) -> bytes:
    binding = json.dumps(
        [tenant, listing, sorted((filters or {}).items())],
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()
    mac = hmac.new(key, _VERSION, hashlib.sha256)
    mac.update(len(binding).to_bytes(4, "big"))
    mac.update(binding)
    mac.update(body)
    return mac.digest()[:_TAG_BYTES]
