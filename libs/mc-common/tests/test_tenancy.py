"""Who may name which tenant in a request: its own, unless an operator or a fleet service."""

from __future__ import annotations

import grpc
import pytest

from mc_common.errors import PermissionDenied, Unauthenticated
from mc_common.tenancy import Principal, authorize_tenant, may_act_for_any_tenant, tenant_context


@pytest.mark.parametrize(
    ("principal", "may"),
    [
        (None, False),
        (Principal("user", "ann"), False),
        (Principal("service", "edge-policy"), True),
        (Principal("operator", "ops"), True),
    ],
)
def test_only_operators_and_fleet_services_act_for_other_tenants(
    principal: Principal | None, may: bool
) -> None:
    with tenant_context("acme", principal):
        assert may_act_for_any_tenant() is may
        authorize_tenant("acme")  # its own tenant: always
        if may:
            authorize_tenant("globex")
        else:
            with pytest.raises(PermissionDenied) as refused:
                authorize_tenant("globex", "checks[2].tenant")
            assert refused.value.grpc_code is grpc.StatusCode.PERMISSION_DENIED
            assert refused.value.reason == "ERROR_REASON_TENANT_MISMATCH"
            assert refused.value.message.startswith("checks[2].tenant: ")


def test_a_caller_without_tenant_or_privilege_is_unauthenticated() -> None:
    with tenant_context(None), pytest.raises(Unauthenticated):
        authorize_tenant("acme")
