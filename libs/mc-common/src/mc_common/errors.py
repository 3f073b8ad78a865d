"""Domain errors that know their gRPC status code and `google.rpc` details.

Services raise these from plain domain code; the server's error interceptor turns them into a
rich gRPC status (code, message, and `grpc-status-details-bin` with BadRequest, RetryInfo,
QuotaFailure, PreconditionFailure and ErrorInfo), in one place.

Reasons are declared once, as `mc.common.v1.ErrorReason` values (never free strings):
`ErrorInfo.reason` is the value's name and `ErrorInfo.domain` the service that raised it
(`<service>.maestro-conductor.dev`, AIP-193).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from mc.common.v1.error_reason_pb2 import ErrorReason

ERROR_DOMAIN = "maestro-conductor.dev"
"""The domain of errors raised outside any service (a service's own is `service_domain`)."""

Reason: TypeAlias = "ErrorReason.ValueType"


def service_domain(service: str) -> str:
    """The ErrorInfo domain of a service: `mc-pql` or `pql` -> `pql.maestro-conductor.dev`."""
    return f"{service.removeprefix('mc-')}.{ERROR_DOMAIN}"


def reason_name(reason: Reason) -> str:
    """The name sent in ErrorInfo.reason; a free string or an undeclared number is a bug."""
    if not isinstance(reason, int) or isinstance(reason, bool):
        raise TypeError(f"error reasons are mc.common.v1.ErrorReason values, not {reason!r}")
    return ErrorReason.Name(reason)


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid request field: its path (e.g. `content.subjects[0].sha256`) and why."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One exhausted quota: what it applies to and a description."""

    subject: str
    description: str


@dataclass(frozen=True, slots=True)
class PreconditionViolation:
    """One failed precondition: its type (e.g. `CHAIN`), subject and description."""

    type: str
    subject: str
    description: str


class MCError(Exception):
    """Base of every error a service reports to callers; carries a gRPC code and a reason."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason: Reason = ErrorReason.ERROR_REASON_UNKNOWN
    # Set by batch operations that fail as a whole: which item of the batch is at fault.
    request_index: int | None = None

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason_value: Reason = self.default_reason if reason is None else reason
        self.reason = reason_name(self.reason_value)
        self.metadata = dict(metadata or {})

    def details(self) -> list[Message]:
        """The `google.rpc` detail messages to attach, ErrorInfo first."""
        return [
            error_details_pb2.ErrorInfo(
                reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
            )
        ]

    def to_status(self, domain: str = ERROR_DOMAIN) -> grpc.Status:
        """The rich gRPC status (code, message, packed details) for this error, its ErrorInfo
        in `domain` (the raising service's, see `service_domain`)."""
        proto = status_pb2.Status(code=_CODE_NUMBERS[self.grpc_code], message=self.message)
        for detail in self.details():
            if isinstance(detail, error_details_pb2.ErrorInfo):
                detail.domain = domain
            packed = any_pb2.Any()
            packed.Pack(detail)
            proto.details.append(packed)
        return rpc_status.to_status(proto)


class InvalidArgument(MCError):
    """The request is malformed; `violations` name each bad field."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    # The proximate cause, not the code again (AIP-193): BadRequest names the fields.
    default_reason = ErrorReason.ERROR_REASON_FIELD_VIOLATION

    def __init__(
        self,
        message: str,
        violations: Iterable[FieldViolation] = (),
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations: list[FieldViolation] = list(violations)

    @classmethod
    def field(
        cls, field: str, description: str, *, reason: Reason | None = None
    ) -> InvalidArgument:
        """An error about one field, with the description as its message."""
        return cls(f"{field}: {description}", [FieldViolation(field, description)], reason=reason)

    def details(self) -> list[Message]:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in self.violations
            ]
        )
        return [*super().details(), bad]


class NotFound(MCError):
    """The resource does not exist for this caller (also used for other tenants' rows)."""

    grpc_code = grpc.StatusCode.NOT_FOUND
    default_reason = ErrorReason.ERROR_REASON_NOT_FOUND


class AlreadyExists(MCError):
    """A resource with this identity exists with different content."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = ErrorReason.ERROR_REASON_ALREADY_EXISTS


class PermissionDenied(MCError):
    """The caller may not do this (wrong principal, or a signature that does not verify)."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = ErrorReason.ERROR_REASON_PERMISSION_DENIED


class Unauthenticated(MCError):
    """The call carries no usable identity (for example no tenant in metadata)."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = ErrorReason.ERROR_REASON_UNAUTHENTICATED


class FailedPrecondition(MCError):
    """The system is not in a state that allows the call; `violations` say which."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = ErrorReason.ERROR_REASON_FAILED_PRECONDITION

    def __init__(
        self,
        message: str,
        violations: Iterable[PreconditionViolation] = (),
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations)
        if not self.violations:  # PreconditionFailure always lists what failed
            kind = self.reason.removeprefix("ERROR_REASON_")
            self.violations = [PreconditionViolation(kind, "", message)]

    def details(self) -> list[Message]:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=v.type, subject=v.subject, description=v.description
                )
                for v in self.violations
            ]
        )
        return [*super().details(), failure]


class ResourceExhausted(MCError):
    """A rate limit or quota denied the call; says when to retry (ms precision) and which quota."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = ErrorReason.ERROR_REASON_RATE_LIMITED

    def __init__(
        self,
        message: str,
        *,
        retry_after_ms: int,
        violations: Sequence[QuotaViolation] = (),
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_ms = retry_after_ms
        self.violations = list(violations)

    def details(self) -> list[Message]:
        delay = duration_pb2.Duration(
            seconds=self.retry_after_ms // 1000, nanos=(self.retry_after_ms % 1000) * 1_000_000
        )
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=v.subject, description=v.description
                )
                for v in self.violations
            ]
        )
        return [*super().details(), error_details_pb2.RetryInfo(retry_delay=delay), quota]


class Unavailable(MCError):
    """A dependency is down; retry later."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    default_reason = ErrorReason.ERROR_REASON_UNAVAILABLE


class Internal(MCError):
    """A bug or broken invariant; details are logged, not returned."""

    grpc_code = grpc.StatusCode.INTERNAL
    default_reason = ErrorReason.ERROR_REASON_INTERNAL


_CODE_NUMBERS: dict[grpc.StatusCode, int] = {
    code: getattr(code_pb2, code.name) for code in grpc.StatusCode
}


def status_details(error: grpc.aio.AioRpcError | grpc.RpcError) -> list[Message]:
    """Decode the `google.rpc` details of a received error (for clients and tests)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return []
    out: list[Message] = []
    for packed in status.details:
        for cls in (
            error_details_pb2.BadRequest,
            error_details_pb2.ErrorInfo,
            error_details_pb2.RetryInfo,
            error_details_pb2.QuotaFailure,
            error_details_pb2.PreconditionFailure,
        ):
            if packed.Is(cls.DESCRIPTOR):
                msg = cls()
                packed.Unpack(msg)
                out.append(msg)
    return out
