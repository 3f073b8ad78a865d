"""The server bootstrap against a real grpc.aio server: tenant rules, validation, error mapping."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from mc.pql.v1 import provenance_pb2 as pb
from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_common import tracecontext
from mc_common.config import ServiceSettings
from mc_common.errors import NotFound, ResourceExhausted, status_details
from mc_common.interceptors import UnsupportedHandler
from mc_common.logs import JsonFormatter
from mc_common.server import RunningServer, ServiceSpec, start_server
from mc_common.tenancy import current_principal, require_tenant
from mc_common.testing.identity import TestTrustDomain

SERVICE = svc.DESCRIPTOR.services_by_name["ProvenanceService"].full_name


class EchoTenantServicer(svc_grpc.ProvenanceServiceServicer):
    """Answers from the bound tenant context, to observe what the interceptors did."""

    async def GetExecution(self, request, context):  # type: ignore[no-untyped-def]
        if request.execution_id == "missing":
            raise NotFound("no such execution")
        if request.execution_id == "limited":
            raise ResourceExhausted("slow down", retry_after_ms=1234)
        if request.execution_id == "boom":
            raise RuntimeError("secret internals")
        return svc.GetExecutionResponse(
            execution=pb.Execution(execution_id=request.execution_id, tenant=require_tenant())
        )

    async def RegisterSigningKey(self, request, context):  # type: ignore[no-untyped-def]
        principal = current_principal()
        return svc.RegisterSigningKeyResponse(
            key=pb.SigningKey(tenant=request.tenant, key_id=str(principal))
        )


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    spec = ServiceSpec(
        name="test",
        service_names=[SERVICE],
        register=lambda s: svc_grpc.add_ProvenanceServiceServicer_to_server(
            EchoTenantServicer(), s
        ),
    )
    running = await start_server(ServiceSettings(grpc_port=0), spec)
    yield running
    await running.stop(0)


@pytest.fixture
async def stub(
    server: RunningServer, mc_trust_domain: TestTrustDomain
) -> AsyncIterator[svc_grpc.ProvenanceServiceStub]:
    async with mc_trust_domain.channel(server.address) as channel:
        yield svc_grpc.ProvenanceServiceStub(channel)


async def test_tenant_is_bound_from_metadata(stub: svc_grpc.ProvenanceServiceStub) -> None:
    reply = await stub.GetExecution(
        svc.GetExecutionRequest(execution_id="e1"), metadata=[("x-mc-tenant", "acme")]
    )
    assert reply.execution.tenant == "acme"


async def test_tenant_rpc_without_tenant_is_refused(stub: svc_grpc.ProvenanceServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetExecution(svc.GetExecutionRequest(execution_id="e1"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info = [d for d in status_details(err.value) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert info[0].reason == "ERROR_REASON_TENANT_REQUIRED"
    assert info[0].domain == "test.maestro-conductor.dev"  # the raising service (AIP-193)


async def test_malformed_tenant_is_invalid(stub: svc_grpc.ProvenanceServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetExecution(
            svc.GetExecutionRequest(execution_id="e1"), metadata=[("x-mc-tenant", "Bad Tenant!")]
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_operator_rpc_needs_operator(stub: svc_grpc.ProvenanceServiceStub) -> None:
    request = svc.RegisterSigningKeyRequest(tenant="acme", public_key_pem="x")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RegisterSigningKey(
            request, metadata=[("x-mc-tenant", "acme"), ("x-mc-principal", "user:bob")]
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    reply = await stub.RegisterSigningKey(request, metadata=[("x-mc-principal", "operator:ops")])
    assert reply.key.key_id == "operator:ops"


async def test_validation_reports_field_paths(stub: svc_grpc.ProvenanceServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetExecution(
            svc.GetExecutionRequest(execution_id=""), metadata=[("x-mc-tenant", "acme")]
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = [d for d in status_details(err.value) if isinstance(d, error_details_pb2.BadRequest)]
    assert [v.field for v in bad[0].field_violations] == ["execution_id"]


async def test_domain_errors_map_to_codes_and_details(
    stub: svc_grpc.ProvenanceServiceStub, server: RunningServer
) -> None:
    md = [("x-mc-tenant", "acme")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetExecution(svc.GetExecutionRequest(execution_id="missing"), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetExecution(svc.GetExecutionRequest(execution_id="limited"), metadata=md)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = [d for d in status_details(err.value) if isinstance(d, error_details_pb2.RetryInfo)]
    assert retry[0].retry_delay.seconds == 1 and retry[0].retry_delay.nanos == 234_000_000
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetExecution(svc.GetExecutionRequest(execution_id="boom"), metadata=md)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (err.value.details() or "")
    text = generate_latest(server.registry).decode()
    assert (
        'grpc_server_handled_total{grpc_code="NOT_FOUND",grpc_method="GetExecution",'
        'grpc_service="mc.pql.v1.ProvenanceService",grpc_type="unary"}' in text
    )
    assert 'grpc_server_handling_seconds_bucket{grpc_method="GetExecution"' in text
    assert "process_cpu_seconds_total" in text and "python_gc_objects_collected_total" in text


async def test_health_reports_per_service(
    server: RunningServer, mc_trust_domain: TestTrustDomain
) -> None:
    async with mc_trust_domain.channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await server.set_serving(False)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_rpcs_are_traced_and_logs_carry_the_trace_id(
    caplog: pytest.LogCaptureFixture, mc_trust_domain: TestTrustDomain
) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from mc_common.logs import JsonFormatter
    from mc_common.tracing import build_tracer_provider

    exporter = InMemorySpanExporter()
    provider = build_tracer_provider("test", span_exporter=exporter)
    lines: list[str] = []

    class Logging(EchoTenantServicer):
        async def GetExecution(self, request, context):  # type: ignore[no-untyped-def]
            import logging

            record = logging.LogRecord("t", logging.INFO, __file__, 1, "inside", None, None)
            lines.append(JsonFormatter("test").format(record))
            return await super().GetExecution(request, context)

    spec = ServiceSpec(
        name="test",
        service_names=[SERVICE],
        register=lambda s: svc_grpc.add_ProvenanceServiceServicer_to_server(Logging(), s),
    )
    running = await start_server(ServiceSettings(), spec, tracer_provider=provider)
    try:
        async with mc_trust_domain.channel(running.address) as channel:
            await svc_grpc.ProvenanceServiceStub(channel).GetExecution(
                svc.GetExecutionRequest(execution_id="e1"), metadata=[("x-mc-tenant", "acme")]
            )
    finally:
        await running.stop(0)
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == [f"/{SERVICE}/GetExecution"]
    import json

    logged = json.loads(lines[0])
    assert logged["tenant"] == "acme"
    assert logged["peer"] == "spiffe://mc.test/ns/mc/sa/gateway"
    assert logged["trace_id"] == f"{spans[0].context.trace_id:032x}"


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "mc.access"]


class JsonLines(logging.Handler):
    """Formats records when they are emitted (inside the call, as in production)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("test"))
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_one_access_line_per_rpc_with_its_trace(
    stub: svc_grpc.ProvenanceServiceStub,
) -> None:
    handler = JsonLines()
    access = logging.getLogger("mc.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        call = stub.GetExecution(
            svc.GetExecutionRequest(execution_id="e1"),
            metadata=[("x-mc-tenant", "acme"), ("traceparent", INCOMING)],
        )
        await call
        trailing = dict(await call.trailing_metadata() or ())
    finally:
        access.removeHandler(handler)

    (entry,) = handler.lines
    assert entry["msg"] == "rpc"
    assert entry["method"] == f"/{SERVICE}/GetExecution"
    assert entry["code"] == "OK"
    assert isinstance(entry["duration_ms"], float)
    assert entry["tenant"] == "acme"
    assert entry["trace_id"] == TRACE_ID
    # The answer names this call's span in the caller's trace.
    assert str(trailing["traceparent"]) == f"00-{TRACE_ID}-{entry['span_id']}-01"


async def test_a_refused_call_is_logged_and_traced_without_a_caller_trace(
    stub: svc_grpc.ProvenanceServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mc.access")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetExecution(
            svc.GetExecutionRequest(execution_id="missing"), metadata=[("x-mc-tenant", "acme")]
        )

    (line,) = access_lines(caplog)
    assert (line.method, line.code) == (f"/{SERVICE}/GetExecution", "NOT_FOUND")  # type: ignore[attr-defined]
    trailing = dict(err.value.trailing_metadata() or ())
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", str(trailing["traceparent"]))


async def test_access_log_can_be_turned_off(
    mc_trust_domain: TestTrustDomain, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mc.access")
    spec = ServiceSpec(
        name="test",
        service_names=[SERVICE],
        register=lambda s: svc_grpc.add_ProvenanceServiceServicer_to_server(
            EchoTenantServicer(), s
        ),
    )
    running = await start_server(ServiceSettings(grpc_port=0, access_log=False), spec)
    try:
        async with mc_trust_domain.channel(running.address) as channel:
            quiet = svc_grpc.ProvenanceServiceStub(channel)
            await quiet.GetExecution(
                svc.GetExecutionRequest(execution_id="e1"), metadata=[("x-mc-tenant", "acme")]
            )
    finally:
        await running.stop(0)
    assert access_lines(caplog) == []


@pytest.mark.parametrize(
    "value",
    ["", "garbage", f"ff-{TRACE_ID}-00f067aa0ba902b7-01", f"00-{'0' * 32}-00f067aa0ba902b7-01"],
)
def test_invalid_traceparents_start_a_new_trace(value: str) -> None:
    assert tracecontext.parse_traceparent(value) is None
    assert tracecontext.parse_traceparent(INCOMING) == int(TRACE_ID, 16)


def test_library_tracebacks_are_one_json_line() -> None:
    try:
        raise ValueError("deep inside a library")
    except ValueError:
        record = logging.LogRecord("lib", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter("test").format(record)

    assert "\n" not in line
    entry = json.loads(line)
    assert "ValueError: deep inside a library" in entry["exc"]


@pytest.mark.parametrize("kind", ["stream_unary", "stream_stream"])
@pytest.mark.parametrize("registration", ["generic", "registered"])
async def test_request_streaming_handlers_are_refused_at_registration(
    kind: str, registration: str
) -> None:
    async def behavior(requests, context):  # type: ignore[no-untyped-def]
        return None

    handler = getattr(grpc, f"{kind}_rpc_method_handler")(behavior)

    def register(server: grpc.aio.Server) -> None:
        if registration == "generic":
            generic = grpc.method_handlers_generic_handler("mc.test.v1.Chat", {"Talk": handler})
            server.add_generic_rpc_handlers((generic,))
        else:
            server.add_registered_method_handlers("mc.test.v1.Chat", {"Talk": handler})  # type: ignore[attr-defined]

    spec = ServiceSpec(name="test", service_names=["mc.test.v1.Chat"], register=register)
    with pytest.raises(UnsupportedHandler, match=re.escape("/mc.test.v1.Chat/Talk")):
        await start_server(ServiceSettings(grpc_port=0), spec)
