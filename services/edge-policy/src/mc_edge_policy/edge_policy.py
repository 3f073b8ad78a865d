"""The PDP as the service offers it: decide for the authenticated caller, log every decision,
and turn an enforced deny into a typed error (RetryInfo when a policy advised a delay)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import NotFound, PermissionDenied, ResourceExhausted
from mc_common.tenancy import current_peer, current_principal, require_tenant
from mc_edge_policy.decision_log import DecisionSink
from mc_edge_policy.evaluator import UnknownPackage
from mc_edge_policy.history import DecisionHistory, NoDecisionHistory, RecordedDecision
from mc_edge_policy.limits import UsageSource, with_limits
from mc_edge_policy.pdp import Caller, Decision, Explanation, PdpStatus, PolicyDecisionPoint


def current_caller() -> Caller:
    """The caller from the authenticated call context: the tenant and principal the server's
    interceptor accepted, and the SPIFFE ID of the immediate caller's verified SVID (empty on
    a plaintext listener, where policies that need a workload identity deny)."""
    principal = current_principal()
    return Caller(require_tenant(), str(principal) if principal else "", current_peer() or "")


class EdgePolicy:
    """Decisions for callers, each recorded in the decision log before it is returned."""

    def __init__(
        self,
        pdp: PolicyDecisionPoint,
        decisions: DecisionSink,
        limits: UsageSource | None = None,
        history: DecisionHistory | None = None,
    ) -> None:
        self.pdp = pdp
        self._decisions = decisions
        self._limits = limits
        self._history = history or NoDecisionHistory()

    async def _input(self, caller: Caller, input_document: dict[str, Any]) -> dict[str, Any]:
        if self._limits is None:
            return input_document
        return await with_limits(self._limits, caller.tenant, input_document)

    async def evaluate(
        self,
        caller: Caller,
        package: str,
        input_document: dict[str, Any],
        *,
        execution_id: str = "",
        enforce: bool = False,
    ) -> Decision:
        input_document = await self._input(caller, input_document)
        try:
            decision = self.pdp.decide(caller, package, input_document, execution_id=execution_id)
        except UnknownPackage as exc:
            raise _not_found(package) from exc
        await self._decisions.record(decision)
        if enforce and not decision.allow:
            raise _enforced(decision)
        return decision

    async def explain(
        self,
        caller: Caller,
        package: str,
        input_document: dict[str, Any],
        *,
        execution_id: str = "",
    ) -> Explanation:
        input_document = await self._input(caller, input_document)
        try:
            explanation = self.pdp.explain(
                caller, package, input_document, execution_id=execution_id
            )
        except UnknownPackage as exc:
            raise _not_found(package) from exc
        await self._decisions.record(explanation.decision)
        return explanation

    async def explain_execution(
        self, caller: Caller, execution_id: str, page_size: int, page_token: str
    ) -> tuple[list[ExplainedDecision], str]:
        """The execution's recorded decisions, with their rules' annotations from the active
        bundle (the tenant is the caller's: pql never returns another tenant's rows)."""
        recorded, token = await self._history.for_execution(
            caller.tenant, execution_id, page_size or 50, page_token
        )
        return [self._annotate(d) for d in recorded], token

    def _annotate(self, decision: RecordedDecision) -> ExplainedDecision:
        active = self.pdp.active
        annotation: dict[str, Any] = {}
        if active is not None:
            policy = active.evaluator.packages.get(decision.policy.replace(".", "/"))
            if policy is not None:
                annotation = policy.annotations.get(decision.rule, {})
        custom = annotation.get("custom")
        custom = custom if isinstance(custom, dict) else {}
        return ExplainedDecision(
            decision,
            title=str(annotation.get("title", "")),
            deprecated=str(custom.get("deprecated", "")),
            from_active_bundle=active is not None and active.digest == decision.bundle_digest,
        )

    def status(self) -> PdpStatus:
        return self.pdp.status()


@dataclass(frozen=True, slots=True)
class ExplainedDecision:
    """A recorded decision and what the active bundle says about its rule."""

    recorded: RecordedDecision
    title: str
    deprecated: str
    from_active_bundle: bool


def _not_found(package: str) -> NotFound:
    return NotFound(
        f"the active policy bundle has no decision package {package!r}",
        reason=ErrorReason.ERROR_REASON_POLICY_PACKAGE_NOT_FOUND,
    )


def _enforced(decision: Decision) -> PermissionDenied | ResourceExhausted:
    metadata = {"decision_id": decision.decision_id, "rule": decision.rule}
    message = f"denied by {decision.rule}: {decision.reason}"
    if decision.retry_after_ms is not None:
        return ResourceExhausted(
            message,
            retry_after_ms=decision.retry_after_ms,
            reason=ErrorReason.ERROR_REASON_POLICY_DENIED,
            metadata=metadata,
        )
    return PermissionDenied(
        message, reason=ErrorReason.ERROR_REASON_POLICY_DENIED, metadata=metadata
    )
