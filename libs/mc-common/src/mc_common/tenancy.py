"""Tenant and principal context: contextvars plus the metadata that carries them across calls.

The gateway authenticates a caller and sets `x-mc-tenant` and `x-mc-principal`; services read
them through `current_tenant()` / `current_principal()`, and the client interceptor forwards them
on outgoing calls so the tenant follows a request through the fleet. A server believes that
metadata only from peers allowed to assert it (`mc_common.identity.PeerPolicy`);
`current_peer()` is the SPIFFE ID of the caller's verified certificate (edge policy checks it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import InvalidArgument, PermissionDenied, Unauthenticated

TENANT_HEADER = "x-mc-tenant"
PRINCIPAL_HEADER = "x-mc-principal"
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
OPERATOR_KIND = "operator"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a kind (`user`, `service`, `operator`) and a name."""

    kind: str
    name: str

    @classmethod
    def parse(cls, raw: str) -> Principal:
        """Parse `kind:name`; a bare name is a `user`."""
        kind, sep, name = raw.partition(":")
        if not sep:
            return cls("user", raw)
        if not kind or not name:
            raise InvalidArgument.field(PRINCIPAL_HEADER, f"malformed principal {raw!r}")
        return cls(kind, name)

    @property
    def is_operator(self) -> bool:
        return self.kind == OPERATOR_KIND

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


_tenant: ContextVar[str | None] = ContextVar("mc_tenant", default=None)
_principal: ContextVar[Principal | None] = ContextVar("mc_principal", default=None)
_peer: ContextVar[str | None] = ContextVar("mc_peer", default=None)


def validate_tenant_id(tenant: str, field: str = TENANT_HEADER) -> str:
    """Return `tenant` if it is a well-formed tenant id, else raise InvalidArgument."""
    if not TENANT_PATTERN.match(tenant):
        raise InvalidArgument.field(
            field, "tenant ids are 1-64 characters of lower-case letters, digits and '-'"
        )
    return tenant


def current_tenant() -> str | None:
    """The tenant of the current call, if any."""
    return _tenant.get()


def current_principal() -> Principal | None:
    """The principal of the current call, if any."""
    return _principal.get()


def current_peer() -> str | None:
    """The SPIFFE ID of the immediate caller of the current call (from its verified SVID)."""
    return _peer.get()


def require_tenant() -> str:
    """The tenant of the current call; raises Unauthenticated when there is none."""
    tenant = _tenant.get()
    if tenant is None:
        raise Unauthenticated(
            f"this call acts for a tenant: set the {TENANT_HEADER} metadata",
            reason=ErrorReason.ERROR_REASON_TENANT_REQUIRED,
        )
    return tenant


def require_operator() -> Principal:
    """The operator principal of the current call; raises PermissionDenied otherwise."""
    principal = _principal.get()
    if principal is None or not principal.is_operator:
        raise PermissionDenied(
            f"this call needs an operator principal ({PRINCIPAL_HEADER}: operator:<name>)",
            reason=ErrorReason.ERROR_REASON_OPERATOR_REQUIRED,
        )
    return principal


SERVICE_KIND = "service"


def may_act_for_any_tenant() -> bool:
    """Whether the caller may name a tenant other than its own in a request: operators and fleet
    services (principal kind `service`, believed only from peers allowed to assert it) may;
    tenant callers may not."""
    principal = _principal.get()
    return principal is not None and (principal.is_operator or principal.kind == SERVICE_KIND)


def authorize_tenant(
    requested: str, field: str = "tenant", message: str = "a tenant may only act for itself"
) -> None:
    """Refuse (PERMISSION_DENIED, TENANT_MISMATCH) a request naming another tenant than the
    caller's, unless the caller may act for any tenant (`may_act_for_any_tenant`)."""
    if not may_act_for_any_tenant() and requested != require_tenant():
        raise PermissionDenied(
            f"{field}: {message}", reason=ErrorReason.ERROR_REASON_TENANT_MISMATCH
        )


@contextmanager
def tenant_context(
    tenant: str | None, principal: Principal | None = None, peer: str | None = None
) -> Iterator[None]:
    """Run a block as `tenant` / `principal`, called by `peer` (consumers, CLIs and tests)."""
    t_token = _tenant.set(tenant)
    p_token = _principal.set(principal)
    peer_token = _peer.set(peer)
    try:
        yield
    finally:
        _tenant.reset(t_token)
        _principal.reset(p_token)
        _peer.reset(peer_token)


def outgoing_metadata() -> list[tuple[str, str]]:
    """Metadata that forwards the current tenant and principal on an outgoing call."""
    out: list[tuple[str, str]] = []
    if (tenant := _tenant.get()) is not None:
        out.append((TENANT_HEADER, tenant))
    if (principal := _principal.get()) is not None:
        out.append((PRINCIPAL_HEADER, str(principal)))
    return out
