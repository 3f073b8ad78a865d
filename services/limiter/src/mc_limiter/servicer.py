"""`mc.limiter.v1.LimiterService` and `FairShareService` servicers: decode, call, encode."""

from __future__ import annotations

from typing import Any, NoReturn

from google.protobuf.timestamp_pb2 import Timestamp

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc.limiter.v1 import fairshare_service_pb2 as fs
from mc.limiter.v1 import fairshare_service_pb2_grpc as fs_grpc
from mc.limiter.v1 import limiter_service_pb2 as svc
from mc.limiter.v1 import limiter_service_pb2_grpc as svc_grpc
from mc_common import tenancy
from mc_common.errors import FieldViolation, InvalidArgument, PermissionDenied
from mc_common.tenancy import require_operator, require_tenant
from mc_limiter import convert
from mc_limiter.decisions import CheckRequest
from mc_limiter.fairshare import FairShareDispatcher, Ticket, TicketState
from mc_limiter.limiter import Limiter
from mc_limiter.rules import parse_rule
from mc_limiter.throttle import ThrottleLevel

LIMITER_SERVICE = svc.DESCRIPTOR.services_by_name["LimiterService"].full_name
FAIRSHARE_SERVICE = fs.DESCRIPTOR.services_by_name["FairShareService"].full_name

Ctx = Any  # grpc.aio.ServicerContext; the interceptors own status handling


_LIMITS = "a tenant may only check its own limits"


def authorize_tenant(requested: str, field: str = "tenant") -> None:
    """A caller checks for its own tenant; operators and mesh services may check for any."""
    tenancy.authorize_tenant(requested, field, _LIMITS)


def _own_tenant_only() -> bool:
    return not tenancy.may_act_for_any_tenant()


def _mismatch(field: str) -> NoReturn:
    raise PermissionDenied(f"{field}: {_LIMITS}", reason=ErrorReason.ERROR_REASON_TENANT_MISMATCH)


class LimiterServicer(svc_grpc.LimiterServiceServicer):
    """Thin adapter over `Limiter`; domain errors are mapped by the error interceptor."""

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    async def Check(self, request: svc.CheckRequest, context: Ctx) -> svc.CheckResponse:
        authorize_tenant(request.tenant)
        decision = await self._limiter.check(
            request.tenant, request.token, request.key, request.cost
        )
        return convert.check_response(decision)

    async def CheckBatch(
        self, request: svc.CheckBatchRequest, context: Ctx
    ) -> svc.CheckBatchResponse:
        items = request.checks
        if _own_tenant_only():
            tenant = require_tenant()
            for i, item in enumerate(items):
                if item.tenant != tenant:
                    _mismatch(f"checks[{i}].tenant")
        checks = [CheckRequest(c.tenant, c.token, c.key, c.cost) for c in items]
        decisions = await self._limiter.check_batch(checks)
        response = svc.CheckBatchResponse()
        add = response.results.add
        for decision in decisions:
            convert.check_response(decision, add)
        return response

    async def GetUsage(self, request: svc.GetUsageRequest, context: Ctx) -> svc.GetUsageResponse:
        authorize_tenant(request.tenant)
        decision = await self._limiter.usage(request.tenant, request.token, request.key)
        return svc.GetUsageResponse(limits=[convert.limit_status(r) for r in decision.results])

    async def PutRule(self, request: svc.PutRuleRequest, context: Ctx) -> svc.PutRuleResponse:
        actor = str(require_operator())
        try:
            rule = parse_rule(convert.rule_data(request.rule))
        except InvalidArgument as exc:  # name fields as the request does: rule.limits[0].burst
            raise InvalidArgument(
                exc.message,
                [FieldViolation(f"rule.{v.field}", v.description) for v in exc.violations],
            ) from None
        stored = await self._limiter.put_rule(
            rule,
            actor=actor,
            expected_revision=request.expected_revision
            if request.HasField("expected_revision")
            else None,
            reason=request.reason,
        )
        return svc.PutRuleResponse(rule=convert.rule_to_proto(stored))

    async def GetRule(self, request: svc.GetRuleRequest, context: Ctx) -> svc.GetRuleResponse:
        stored = await self._limiter.get_rule(request.rule_id)
        return svc.GetRuleResponse(rule=convert.rule_to_proto(stored))

    async def ListRules(self, request: svc.ListRulesRequest, context: Ctx) -> svc.ListRulesResponse:
        page = await self._limiter.list_rules(
            request.tenant or None, page_size=request.page_size, page_token=request.page_token
        )
        return svc.ListRulesResponse(
            rules=[convert.rule_to_proto(r) for r in page.rules],
            next_page_token=page.next_page_token,
        )

    async def DeleteRule(
        self, request: svc.DeleteRuleRequest, context: Ctx
    ) -> svc.DeleteRuleResponse:
        actor = str(require_operator())
        await self._limiter.delete_rule(request.rule_id, actor=actor, reason=request.reason)
        return svc.DeleteRuleResponse()

    async def SetThrottleLevel(
        self, request: svc.SetThrottleLevelRequest, context: Ctx
    ) -> svc.SetThrottleLevelResponse:
        actor = str(require_operator())
        event = await self._limiter.set_throttle(
            request.tenant,
            convert.THROTTLE_LEVELS[request.level],
            actor=actor,
            reason=request.reason,
        )
        return svc.SetThrottleLevelResponse(
            previous=convert.THROTTLE_LEVELS_PB[ThrottleLevel(event.before)], level=request.level
        )

    async def GetThrottleLevel(
        self, request: svc.GetThrottleLevelRequest, context: Ctx
    ) -> svc.GetThrottleLevelResponse:
        level = self._limiter.throttle_level(request.tenant)
        return svc.GetThrottleLevelResponse(level=convert.THROTTLE_LEVELS_PB[level])

    async def SetGlobalShadow(
        self, request: svc.SetGlobalShadowRequest, context: Ctx
    ) -> svc.SetGlobalShadowResponse:
        actor = str(require_operator())
        await self._limiter.set_global_shadow(request.enabled, actor=actor, reason=request.reason)
        return svc.SetGlobalShadowResponse(enabled=self._limiter.global_shadow)

    async def PutDomainConfig(
        self, request: svc.PutDomainConfigRequest, context: Ctx
    ) -> svc.PutDomainConfigResponse:
        actor = str(require_operator())
        plan = await self._limiter.put_domain(
            request.source,
            file_name=request.file_name or "<rules>",
            actor=actor,
            dry_run=request.dry_run,
            expected_revision=request.expected_revision
            if request.HasField("expected_revision")
            else None,
            reason=request.reason,
        )
        return convert.domain_plan(plan)

    async def GetDomainConfig(
        self, request: svc.GetDomainConfigRequest, context: Ctx
    ) -> svc.GetDomainConfigResponse:
        stored = await self._limiter.admin.get_domain(request.domain)
        return svc.GetDomainConfigResponse(config=convert.domain_to_proto(stored, source=True))

    async def ListDomainConfigs(
        self, request: svc.ListDomainConfigsRequest, context: Ctx
    ) -> svc.ListDomainConfigsResponse:
        domains = await self._limiter.admin.list_domains()
        return svc.ListDomainConfigsResponse(
            configs=[convert.domain_to_proto(d, source=False) for d in domains]
        )

    async def DeleteDomainConfig(
        self, request: svc.DeleteDomainConfigRequest, context: Ctx
    ) -> svc.DeleteDomainConfigResponse:
        actor = str(require_operator())
        await self._limiter.admin.delete_domain(request.domain, actor=actor, reason=request.reason)
        return svc.DeleteDomainConfigResponse()


_SLOT_STATES = {
    TicketState.GRANTED: fs.SLOT_STATE_GRANTED,
    TicketState.QUEUED: fs.SLOT_STATE_QUEUED,
    TicketState.EXPIRED: fs.SLOT_STATE_EXPIRED,
}


def _slot(ticket: Ticket) -> fs.Slot:
    out = fs.Slot(
        tenant=ticket.tenant,
        request_id=ticket.request_id,
        state=_SLOT_STATES[ticket.state],
        queue_position=ticket.queue_position or 0,
    )
    if ticket.lease_expires_at_ms is not None:
        expires = Timestamp()
        expires.FromMilliseconds(ticket.lease_expires_at_ms)
        out.lease_expires_at.CopyFrom(expires)
    return out


class FairShareServicer(fs_grpc.FairShareServiceServicer):
    """Thin adapter over `FairShareDispatcher`; the tenant always comes from the context."""

    def __init__(self, dispatcher: FairShareDispatcher) -> None:
        self._fs = dispatcher

    async def AcquireSlot(
        self, request: fs.AcquireSlotRequest, context: Ctx
    ) -> fs.AcquireSlotResponse:
        tenant = require_tenant()
        lease = request.lease_ms or None
        ticket = await self._fs.acquire(tenant, request.request_id, lease_ms=lease)
        if ticket.state is TicketState.QUEUED and request.wait_ms:
            ticket = await self._fs.wait(
                tenant, request.request_id, timeout_s=request.wait_ms / 1000
            )
        return fs.AcquireSlotResponse(slot=_slot(ticket))

    async def ReleaseSlot(
        self, request: fs.ReleaseSlotRequest, context: Ctx
    ) -> fs.ReleaseSlotResponse:
        result = await self._fs.cancel(require_tenant(), request.request_id)
        return fs.ReleaseSlotResponse(
            released=result.previous_state is TicketState.GRANTED,
            withdrawn=result.previous_state is TicketState.QUEUED,
            dispatched=len(result.dispatched),
        )

    async def RenewSlot(self, request: fs.RenewSlotRequest, context: Ctx) -> fs.RenewSlotResponse:
        ticket = await self._fs.renew(
            require_tenant(), request.request_id, lease_ms=request.lease_ms or None
        )
        return fs.RenewSlotResponse(slot=_slot(ticket))

    async def GetSlot(self, request: fs.GetSlotRequest, context: Ctx) -> fs.GetSlotResponse:
        ticket = await self._fs.poll(require_tenant(), request.request_id)
        return fs.GetSlotResponse(slot=_slot(ticket))

    async def SetTenantWeight(
        self, request: fs.SetTenantWeightRequest, context: Ctx
    ) -> fs.SetTenantWeightResponse:
        await self._fs.set_weight(request.tenant, request.weight)
        return fs.SetTenantWeightResponse(weight=request.weight)

    async def GetFairShareStats(
        self, request: fs.GetFairShareStatsRequest, context: Ctx
    ) -> fs.GetFairShareStatsResponse:
        stats = await self._fs.stats()
        return fs.GetFairShareStatsResponse(
            capacity=stats.capacity,
            running=stats.running,
            queued=stats.queued,
            tenants=[
                fs.TenantSlots(tenant=t, weight=s.weight, running=s.running, queued=s.queued)
                for t, s in sorted(stats.tenants.items())
            ],
        )
