"""The REST surface as the descriptor set declares it: every RPC's `google.api.http` bindings.

Nothing here knows any particular service: `load_api` reads a serialized FileDescriptorSet
(`mc/descriptor_set.binpb` by default), builds message classes in a private descriptor pool,
and returns one `Binding` per HTTP rule (additional bindings included).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from google.protobuf.message import Message

# Imported for their side effect: the option extensions read below must be registered in the
# default pool before the descriptor set is parsed, or they stay unknown fields.
from mc.common.v1 import options_pb2
from mc_gateway.templates import PathTemplate

HTTP_METHODS = ("get", "put", "post", "delete", "patch")
ACCESS_TENANT, ACCESS_OPERATOR, ACCESS_INTERNAL = (
    options_pb2.ACCESS_TENANT,
    options_pb2.ACCESS_OPERATOR,
    options_pb2.ACCESS_INTERNAL,
)


class ApiError(ValueError):
    """The descriptor set declares something the gateway cannot serve."""


@dataclass(frozen=True, slots=True)
class Rpc:
    """One RPC: its gRPC path, message classes, streaming shape and access level."""

    service: str  # full service name, e.g. mc.pql.v1.ProvenanceService
    name: str
    input_type: type[Message]
    output_type: type[Message]
    server_streaming: bool
    client_streaming: bool
    access: int
    comment: str = ""

    @property
    def grpc_path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def input_descriptor(self) -> Descriptor:
        return self.input_type.DESCRIPTOR  # type: ignore[return-value]

    @property
    def output_descriptor(self) -> Descriptor:
        return self.output_type.DESCRIPTOR  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Binding:
    """One HTTP rule of an RPC: verb, path template, body and response body selectors."""

    rpc: Rpc
    http_method: str  # upper case
    template: PathTemplate
    body: str  # "" (no body), "*" or a top-level field name
    response_body: str  # "" (the whole response) or a top-level field name
    index: int = 0  # 0 for the main rule, 1.. for additional_bindings

    @property
    def path_fields(self) -> tuple[str, ...]:
        return tuple(v.field_path for v in self.template.variables)


@dataclass
class Api:
    """Every binding of the descriptor set's services, and the pool their messages live in."""

    pool: descriptor_pool.DescriptorPool
    bindings: list[Binding] = field(default_factory=list)
    services: dict[str, list[Rpc]] = field(default_factory=dict)

    def only(self, services: Iterable[str]) -> Api:
        """The same API restricted to the named services."""
        keep = set(services)
        return Api(
            self.pool,
            [b for b in self.bindings if b.rpc.service in keep],
            {k: v for k, v in self.services.items() if k in keep},
        )


def default_descriptor_set() -> bytes:
    """The fleet's descriptor set, shipped in mc-protos."""
    return resources.files("mc").joinpath("descriptor_set.binpb").read_bytes()


def load_api(data: bytes | Path | None = None) -> Api:
    """Parse a FileDescriptorSet and collect every RPC's HTTP bindings."""
    if isinstance(data, Path):
        data = data.read_bytes()
    fds = descriptor_pb2.FileDescriptorSet.FromString(data or default_descriptor_set())
    pool = descriptor_pool.DescriptorPool()
    for file in fds.file:
        pool.Add(file)  # type: ignore[no-untyped-call]
    api = Api(pool)
    for file in fds.file:
        comments = _comments(file)
        for s_index, service in enumerate(file.service):
            full = f"{file.package}.{service.name}" if file.package else service.name
            rpcs: list[Rpc] = []
            for m_index, method in enumerate(service.method):
                desc = pool.FindMethodByName(f"{full}.{method.name}")  # type: ignore[no-untyped-call]
                rpc = _rpc(desc, method, comments.get((6, s_index, 2, m_index), ""))
                rpcs.append(rpc)
                if method.options.HasExtension(annotations_pb2.http):
                    rule = method.options.Extensions[annotations_pb2.http]
                    api.bindings.extend(_bindings(rpc, rule))
            api.services[full] = rpcs
    return api


def _rpc(desc: MethodDescriptor, method: descriptor_pb2.MethodDescriptorProto, doc: str) -> Rpc:
    access = method.options.Extensions[options_pb2.access] or ACCESS_TENANT
    return Rpc(
        service=desc.containing_service.full_name,
        name=desc.name,
        input_type=message_factory.GetMessageClass(desc.input_type),
        output_type=message_factory.GetMessageClass(desc.output_type),
        server_streaming=method.server_streaming,
        client_streaming=method.client_streaming,
        access=access,
        comment=doc,
    )


def _bindings(rpc: Rpc, rule: http_pb2.HttpRule) -> list[Binding]:
    out: list[Binding] = []
    for index, r in enumerate([rule, *rule.additional_bindings]):
        if index and r.additional_bindings:
            raise ApiError(f"{rpc.grpc_path}: additional_bindings may not nest")
        out.append(_binding(rpc, r, index))
    return out


def _binding(rpc: Rpc, rule: http_pb2.HttpRule, index: int) -> Binding:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise ApiError(f"{rpc.grpc_path}: HTTP rule without a pattern")
    if kind == "custom":
        method, path = rule.custom.kind.upper(), rule.custom.path
    else:
        method, path = kind.upper(), getattr(rule, kind)
    if rpc.client_streaming:
        raise ApiError(f"{rpc.grpc_path}: client streaming cannot be transcoded")
    template = PathTemplate.parse(path)
    fields = rpc.input_descriptor.fields_by_name
    for var in template.variables:
        _check_field_path(rpc, var.field_path)
    if rule.body not in ("", "*") and rule.body not in fields:
        raise ApiError(f"{rpc.grpc_path}: body field {rule.body!r} does not exist")
    if rule.response_body and rule.response_body not in rpc.output_descriptor.fields_by_name:
        raise ApiError(f"{rpc.grpc_path}: response_body {rule.response_body!r} does not exist")
    return Binding(rpc, method, template, rule.body, rule.response_body, index)


def _check_field_path(rpc: Rpc, path: str) -> None:
    desc: Descriptor | None = rpc.input_descriptor
    for part in path.split("."):
        if desc is None or part not in desc.fields_by_name:
            raise ApiError(f"{rpc.grpc_path}: path variable {path!r} names no field")
        f = desc.fields_by_name[part]
        if f.label == f.LABEL_REPEATED:
            raise ApiError(f"{rpc.grpc_path}: path variable {path!r} is repeated")
        desc = f.message_type


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Leading comments by source path (present when the set was built with source info)."""
    out: dict[tuple[int, ...], str] = {}
    for loc in file.source_code_info.location:
        if loc.leading_comments:
            out[tuple(loc.path)] = loc.leading_comments.strip()
    return out


def message_comments(data: bytes | Path | None = None) -> dict[str, str]:
    """Leading comments of messages and fields by full name (for OpenAPI descriptions)."""
    if isinstance(data, Path):
        data = data.read_bytes()
    fds = descriptor_pb2.FileDescriptorSet.FromString(data or default_descriptor_set())
    out: dict[str, str] = {}
    for file in fds.file:
        comments = _comments(file)
        prefix = f"{file.package}." if file.package else ""
        _walk_messages(file.message_type, (4,), prefix, comments, out)
    return out


def _walk_messages(
    messages: Sequence[descriptor_pb2.DescriptorProto],
    path: tuple[int, ...],
    prefix: str,
    comments: dict[tuple[int, ...], str],
    out: dict[str, str],
) -> None:
    for i, msg in enumerate(messages):
        here = (*path, i)
        name = prefix + msg.name
        if doc := comments.get(here):
            out[name] = doc
        for j, f in enumerate(msg.field):
            if doc := comments.get((*here, 2, j)):
                out[f"{name}.{f.name}"] = doc
        _walk_messages(msg.nested_type, (*here, 3), name + ".", comments, out)
