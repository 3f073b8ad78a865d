"""Who may call what: the peer's SPIFFE ID, from its verified certificate, against allow lists.

The server's interceptor asks `PeerPolicy.authorize()` on every call, before believing any
metadata. The rules (ADR 0040):

- no verified peer (no client certificate): UNAUTHENTICATED `ERROR_REASON_PEER_UNAUTHENTICATED`;
- a peer outside our trust domain (possible only with a federated bundle): PERMISSION_DENIED
  `ERROR_REASON_PEER_NOT_ALLOWED` (as for the next two rules);
- `x-mc-tenant` or a non-operator `x-mc-principal` only from `tenant_callers`, an operator
  principal only from `operator_callers`, else PERMISSION_DENIED
  `ERROR_REASON_IDENTITY_ASSERTION_NOT_ALLOWED`;
- operator RPCs only from `operator_callers` (which then still need an operator principal);
- front-door RPCs (Envoy's rate limit service) only from the `front_door` IDs;
- internal RPCs (health, reflection) from any peer of the trust domain.

Every refusal is logged with the method, the peer and the reason.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mc.common.v1 import options_pb2
from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import PermissionDenied, Reason, Unauthenticated
from mc_common.identity.settings import IdentitySettings

if TYPE_CHECKING:
    import grpc

    Ctx = grpc.aio.ServicerContext[Any, Any]
else:
    Ctx = Any

log = logging.getLogger("mc.identity")

UNAUTHENTICATED = ErrorReason.ERROR_REASON_PEER_UNAUTHENTICATED
NOT_ALLOWED = ErrorReason.ERROR_REASON_PEER_NOT_ALLOWED
ASSERTION = ErrorReason.ERROR_REASON_IDENTITY_ASSERTION_NOT_ALLOWED
Refusal = tuple[type[Unauthenticated] | type[PermissionDenied], "Reason", str]

PEER_SPIFFE_ID = "peer_spiffe_id"  # set by grpc core when the verified leaf has one SPIFFE ID


def peer_spiffe_id(context: Ctx) -> str | None:
    """The SPIFFE ID of the verified client certificate of this call, if any."""
    values = context.auth_context().get(PEER_SPIFFE_ID)
    for value in values or ():
        return value.decode()
    return None


class PeerPolicy:
    """The allow lists of one server, resolved to full SPIFFE IDs once."""

    def __init__(self, settings: IdentitySettings) -> None:
        self.plaintext_peer: str | None = None
        if settings.mode == "plaintext-dev":
            (self.plaintext_peer,) = settings.callers([settings.plaintext_peer])
        self.trust_domain_prefix = f"spiffe://{settings.trust_domain}/"
        self.tenant_callers = settings.callers(settings.tenant_callers)
        self.operator_callers = settings.callers(settings.operator_callers)
        self.front_door = settings.callers(settings.front_door)

    def peer(self, context: Ctx) -> str | None:
        """Who is calling: the verified SPIFFE ID (the configured peer in plaintext-dev mode)."""
        if self.plaintext_peer is not None:
            return self.plaintext_peer
        return peer_spiffe_id(context)

    def authorize(
        self,
        method: str,
        access: int,
        peer: str | None,
        *,
        tenant: bool,
        principal_kind: str | None,
        front_door_only: bool = False,
    ) -> None:
        """Raise Unauthenticated / PermissionDenied unless `peer` may make this call with the
        tenant (`tenant`: whether `x-mc-tenant` was sent) and principal it asserts."""
        refusal = self._refusal(access, peer, tenant, principal_kind, front_door_only)
        if refusal is not None:
            error, reason, message = refusal
            log.warning(
                "call refused",
                extra={"method": method, "peer": peer or "", "reason": ErrorReason.Name(reason)},
            )
            raise error(message, reason=reason, metadata={"peer": peer or "", "method": method})

    def _refusal(
        self,
        access: int,
        peer: str | None,
        tenant: bool,
        principal_kind: str | None,
        front_door_only: bool,
    ) -> Refusal | None:
        if peer is None:
            return Unauthenticated, UNAUTHENTICATED, "this call needs a client certificate (SVID)"
        if not peer.startswith(self.trust_domain_prefix):
            return PermissionDenied, NOT_ALLOWED, "the caller is not in this trust domain"
        if front_door_only and peer not in self.front_door:
            return PermissionDenied, NOT_ALLOWED, "only the front door may call this method"
        if access == options_pb2.ACCESS_OPERATOR and peer not in self.operator_callers:
            return PermissionDenied, NOT_ALLOWED, "operator calls come only through the gateway"
        if principal_kind == "operator":
            if peer not in self.operator_callers:
                return PermissionDenied, ASSERTION, "this caller may not assert an operator"
        elif (tenant or principal_kind is not None) and peer not in self.tenant_callers:
            return PermissionDenied, ASSERTION, "this caller may not act for a tenant"
        return None
