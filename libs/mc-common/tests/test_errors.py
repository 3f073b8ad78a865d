"""Error reasons are `mc.common.v1.ErrorReason` values: declared once, never free strings."""

from __future__ import annotations

import inspect

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common import errors


def error_classes() -> list[type[errors.MCError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.MCError)
    ]


def error_info(status: grpc.Status) -> error_details_pb2.ErrorInfo:
    proto = status_pb2.Status()
    proto.ParseFromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    assert proto.details[0].Unpack(info)
    return info


@pytest.mark.parametrize("cls", error_classes(), ids=lambda c: c.__name__)
def test_each_error_class_defaults_to_its_codes_declared_reason(cls: type[errors.MCError]) -> None:
    name = ErrorReason.Name(cls.default_reason)

    assert name.startswith("ERROR_REASON_")
    # RATE_LIMITED and FIELD_VIOLATION say more than the code's name; the other defaults are
    # fallbacks that raise sites replace (tests/repo/test_error_reasons.py).
    if cls is errors.InvalidArgument:
        assert name == "ERROR_REASON_FIELD_VIOLATION"
    elif cls is not errors.ResourceExhausted:
        assert name == f"ERROR_REASON_{cls.grpc_code.name}"


def test_reason_is_the_enum_name_and_domain_the_raising_service() -> None:
    error = errors.NotFound("no such rule", reason=ErrorReason.ERROR_REASON_RULE_NOT_FOUND)

    info = error_info(error.to_status(errors.service_domain("mc-limiter")))

    assert info.reason == "ERROR_REASON_RULE_NOT_FOUND"
    assert info.domain == "limiter.maestro-conductor.dev"
    assert error.reason == "ERROR_REASON_RULE_NOT_FOUND"


def test_without_a_service_the_domain_is_the_projects() -> None:
    info = error_info(errors.Unavailable("down").to_status())

    assert (info.reason, info.domain) == ("ERROR_REASON_UNAVAILABLE", errors.ERROR_DOMAIN)


@pytest.mark.parametrize("reason", ["RULE_NOT_FOUND", "ERROR_REASON_RULE_NOT_FOUND", 99_999])
def test_a_free_string_or_undeclared_number_is_refused(reason: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        errors.NotFound("x", reason=reason)  # type: ignore[arg-type]


def test_reasons_follow_aip_193_shape() -> None:
    for name in ErrorReason.DESCRIPTOR.values_by_name:
        assert len(name) <= 63
        assert name.replace("_", "").isalnum() and name.isupper()


def test_a_precondition_failure_always_lists_a_violation() -> None:
    error = errors.FailedPrecondition(
        "request is queued", reason=ErrorReason.ERROR_REASON_SLOT_REQUEST_QUEUED
    )
    [failure] = [d for d in error.details() if isinstance(d, error_details_pb2.PreconditionFailure)]
    assert [(v.type, v.description) for v in failure.violations] == [
        ("SLOT_REQUEST_QUEUED", "request is queued")
    ]
