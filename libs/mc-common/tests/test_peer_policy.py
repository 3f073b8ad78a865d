"""PeerPolicy as a pure function: who may call and assert what (ADR 0040), by property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mc.common.v1 import options_pb2
from mc_common.errors import PermissionDenied, Unauthenticated
from mc_common.identity import IdentitySettings, PeerPolicy

TD = "mc.prop"
POLICY = PeerPolicy(
    IdentitySettings(
        mode="mtls",
        trust_domain=TD,
        tenant_callers=["gateway", "billing"],
        operator_callers=["gateway"],
        front_door=["gateway", "spiffe://edge.example/ns/envoy/sa/front"],
    )
)
GATEWAY = f"spiffe://{TD}/ns/mc/sa/gateway"
BILLING = f"spiffe://{TD}/ns/mc/sa/billing"
ACCESS = [options_pb2.ACCESS_TENANT, options_pb2.ACCESS_OPERATOR, options_pb2.ACCESS_INTERNAL]

peers = st.one_of(
    st.none(),
    st.sampled_from(
        [
            GATEWAY,
            BILLING,
            f"spiffe://{TD}/ns/mc/sa/pql",
            f"spiffe://{TD}/ns/other/sa/gateway",
            "spiffe://evil.example/ns/mc/sa/gateway",
            "spiffe://edge.example/ns/envoy/sa/front",
        ]
    ),
    st.text(max_size=60),
)
kinds = st.one_of(st.none(), st.sampled_from(["operator", "user", "service"]), st.text(max_size=10))


def decide(access: int, peer: str | None, tenant: bool, kind: str | None, door: bool) -> str:
    try:
        POLICY.authorize(
            "/m", access, peer, tenant=tenant, principal_kind=kind, front_door_only=door
        )
    except Unauthenticated as error:
        return f"unauthenticated:{error.reason}"
    except PermissionDenied as error:
        return f"denied:{error.reason}"
    return "ok"


@given(st.sampled_from(ACCESS), peers, st.booleans(), kinds, st.booleans())
def test_every_call_is_allowed_or_refused_with_a_typed_reason(
    access: int, peer: str | None, tenant: bool, kind: str | None, door: bool
) -> None:
    outcome = decide(access, peer, tenant, kind, door)
    if peer is None:
        assert outcome == "unauthenticated:ERROR_REASON_PEER_UNAUTHENTICATED"
        return
    if outcome == "ok":
        # Whatever is allowed: an in-domain peer, asserting only what it may.
        assert peer.startswith(f"spiffe://{TD}/")
        if kind == "operator" or access == options_pb2.ACCESS_OPERATOR:
            assert peer == GATEWAY
        if tenant or kind is not None:
            assert peer in (GATEWAY, BILLING)
        if door:
            assert peer == GATEWAY  # the out-of-domain front door still fails the domain check
    else:
        assert outcome.startswith("denied:ERROR_REASON_")


@given(st.sampled_from(ACCESS), st.booleans(), kinds)
def test_the_gateway_may_assert_anything(access: int, tenant: bool, kind: str | None) -> None:
    assert decide(access, GATEWAY, tenant, kind, door=True) == "ok"


@pytest.mark.parametrize(
    ("access", "expected"),
    [
        (options_pb2.ACCESS_INTERNAL, "ok"),
        (options_pb2.ACCESS_OPERATOR, "denied:ERROR_REASON_PEER_NOT_ALLOWED"),
        # Passes the peer check; require_tenant() then refuses a tenant RPC without a tenant.
        (options_pb2.ACCESS_TENANT, "ok"),
    ],
)
def test_a_workload_asserting_nothing(access: int, expected: str) -> None:
    pql = f"spiffe://{TD}/ns/mc/sa/pql"
    assert decide(access, pql, tenant=False, kind=None, door=False) == expected
    assert decide(access, pql, tenant=True, kind=None, door=False).startswith("denied:")


def test_plaintext_dev_takes_every_caller_to_be_the_configured_peer() -> None:
    policy = PeerPolicy(IdentitySettings(mode="plaintext-dev", trust_domain=TD))
    assert policy.plaintext_peer == GATEWAY
    assert policy.peer(context=None) == GATEWAY
