"""OpenAPI 3.1 from the same descriptors the gateway serves, with the PGV rules as constraints.

Schemas follow the proto3 JSON mapping: field names are JSON names, 64-bit integers are decimal
strings, enums are value names, bytes are base64 strings, well-known types have their JSON forms.
PGV (`validate.rules`) becomes JSON Schema keywords where one exists: string lengths and
patterns, `in`/`not_in`, numeric bounds, `defined_only` enums, repeated/map sizes, required
messages. Rules JSON Schema cannot say (byte lengths, bounds on 64-bit integers carried as
strings, oneofs) are only enforced by the service, which answers 400.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from validate import validate_pb2

from mc_gateway.descriptors import Api, Binding
from mc_gateway.templates import Variable

F = FieldDescriptor
_INT32 = {F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32}
_UINT32 = {F.TYPE_UINT32, F.TYPE_FIXED32}
_INT64 = {F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64}
_UINT64 = {F.TYPE_UINT64, F.TYPE_FIXED64}
_FLOAT = {F.TYPE_FLOAT, F.TYPE_DOUBLE}
_RULE_KIND = {
    F.TYPE_INT32: "int32",
    F.TYPE_SINT32: "sint32",
    F.TYPE_SFIXED32: "sfixed32",
    F.TYPE_UINT32: "uint32",
    F.TYPE_FIXED32: "fixed32",
    F.TYPE_FLOAT: "float",
    F.TYPE_DOUBLE: "double",
}
_WKT: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
    },
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BytesValue": {"type": ["string", "null"], "format": "byte"},
    "google.protobuf.Int32Value": {"type": ["integer", "null"], "format": "int32"},
    "google.protobuf.UInt32Value": {"type": ["integer", "null"], "minimum": 0},
    "google.protobuf.Int64Value": {"type": ["string", "null"], "pattern": r"^-?[0-9]+$"},
    "google.protobuf.UInt64Value": {"type": ["string", "null"], "pattern": r"^[0-9]+$"},
    "google.protobuf.FloatValue": {"type": ["number", "null"]},
    "google.protobuf.DoubleValue": {"type": ["number", "null"]},
}
STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "google.rpc.Status: the gRPC code, a message, and typed details.",
    "properties": {
        "code": {"type": "integer", "format": "int32"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": _WKT["google.protobuf.Any"]},
    },
    "required": ["code", "message"],
}


class _Builder:
    def __init__(self, comments: dict[str, str] | None = None) -> None:
        self.schemas: dict[str, Any] = {"google.rpc.Status": STATUS_SCHEMA}
        self.comments = comments or {}

    def ref(self, desc: Descriptor) -> dict[str, Any]:
        if desc.full_name in _WKT:
            return dict(_WKT[desc.full_name])
        if desc.full_name not in self.schemas:
            self.schemas[desc.full_name] = {}  # placeholder: recursion stops here
            self.schemas[desc.full_name] = self._message(desc)
        return {"$ref": f"#/components/schemas/{desc.full_name}"}

    def _message(self, desc: Descriptor) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in desc.fields:
            rules = _rules(field)
            prop = self.field(field, rules)
            if doc := self.comments.get(f"{desc.full_name}.{field.name}"):
                prop = {**prop, "description": doc} if "$ref" not in prop else prop
            properties[field.json_name] = prop
            if rules is not None and rules.HasField("message") and rules.message.required:
                required.append(field.json_name)
        out: dict[str, Any] = {"type": "object", "properties": properties}
        if doc := self.comments.get(desc.full_name):
            out["description"] = doc
        if required:
            out["required"] = required
        return out

    def field(self, field: FieldDescriptor, rules: Any = None) -> dict[str, Any]:
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            value_rules = None
            out: dict[str, Any] = {"type": "object"}
            if rules is not None and rules.HasField("map"):
                m = rules.map
                if m.HasField("min_pairs"):
                    out["minProperties"] = m.min_pairs
                if m.HasField("max_pairs"):
                    out["maxProperties"] = m.max_pairs
                if m.HasField("values"):
                    value_rules = m.values
            out["additionalProperties"] = self.single(value_field, value_rules)
            return out
        if field.label == field.LABEL_REPEATED:
            item_rules = None
            out = {"type": "array"}
            if rules is not None and rules.HasField("repeated"):
                r = rules.repeated
                if r.HasField("min_items"):
                    out["minItems"] = r.min_items
                if r.HasField("max_items"):
                    out["maxItems"] = r.max_items
                if r.HasField("items"):
                    item_rules = r.items
            out["items"] = self.single(field, item_rules)
            return out
        return self.single(field, rules)

    def single(self, field: FieldDescriptor, rules: Any) -> dict[str, Any]:
        t = field.type
        if t == F.TYPE_MESSAGE:
            return self.ref(field.message_type)
        if t == F.TYPE_ENUM:
            return _enum(field.enum_type, rules)
        if t == F.TYPE_STRING:
            return _string(rules)
        if t == F.TYPE_BYTES:
            return {"type": "string", "format": "byte"}
        if t == F.TYPE_BOOL:
            return {"type": "boolean"}
        if t in _INT64:
            return {"type": "string", "format": "int64", "pattern": r"^-?[0-9]{1,19}$"}
        if t in _UINT64:
            return {"type": "string", "format": "uint64", "pattern": r"^[0-9]{1,20}$"}
        if t in _INT32:
            out: dict[str, Any] = {
                "type": "integer",
                "format": "int32",
                "minimum": -(2**31),
                "maximum": 2**31 - 1,
            }
        elif t in _UINT32:
            out = {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1}
        elif t in _FLOAT:
            out = {"type": "number", "format": "double" if t == F.TYPE_DOUBLE else "float"}
        else:
            return {}
        return _numeric(out, rules, _RULE_KIND.get(t))


def _rules(field: FieldDescriptor) -> Any:
    options = field.GetOptions()
    if options.HasExtension(validate_pb2.rules):
        return options.Extensions[validate_pb2.rules]
    return None


def _string(rules: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string"}
    if rules is None or not rules.HasField("string"):
        return out
    s = rules.string
    if s.HasField("min_len"):
        out["minLength"] = s.min_len
    if s.HasField("max_len"):
        out["maxLength"] = s.max_len
    if s.HasField("len"):
        out["minLength"] = out["maxLength"] = s.len
    if s.HasField("pattern"):
        out["pattern"] = s.pattern
    if s.HasField("prefix"):
        out["pattern"] = "^" + re.escape(s.prefix)
    if s.HasField("const"):
        out["const"] = s.const
    if s.__getattribute__("in"):
        out["enum"] = list(s.__getattribute__("in"))
    if s.not_in:
        out["not"] = {"enum": list(s.not_in)}
    for kind, fmt in (("email", "email"), ("hostname", "hostname"), ("uuid", "uuid")):
        if s.HasField(kind) and getattr(s, kind):
            out["format"] = fmt
    return out


def _numeric(out: dict[str, Any], rules: Any, kind: str | None) -> dict[str, Any]:
    if rules is None or kind is None or not rules.HasField(kind):
        return out
    r = getattr(rules, kind)
    if r.HasField("gte"):
        out["minimum"] = r.gte
    if r.HasField("gt"):
        out["exclusiveMinimum"] = r.gt
        out.pop("minimum", None)
    if r.HasField("lte"):
        out["maximum"] = r.lte
    if r.HasField("lt"):
        out["exclusiveMaximum"] = r.lt
        out.pop("maximum", None)
    if r.HasField("const"):
        out["const"] = r.const
    if r.__getattribute__("in"):
        out["enum"] = list(r.__getattribute__("in"))
    return out


def _enum(desc: EnumDescriptor, rules: Any) -> dict[str, Any]:
    names = [v.name for v in desc.values]
    if rules is not None and rules.HasField("enum"):
        e = rules.enum
        numbers = {v.name: v.number for v in desc.values}
        if e.__getattribute__("in"):
            allowed = set(e.__getattribute__("in"))
            names = [n for n in names if numbers[n] in allowed]
        if e.not_in:
            names = [n for n in names if numbers[n] not in set(e.not_in)]
    return {"type": "string", "enum": names}


def _is_map(field: FieldDescriptor) -> bool:
    return bool(
        field.type == F.TYPE_MESSAGE
        and field.message_type is not None
        and field.message_type.GetOptions().map_entry
    )


def _path(binding: Binding, builder: _Builder) -> tuple[str, list[dict[str, Any]]]:
    """The OpenAPI path and its parameters. A plain `{field}` is one parameter; a variable with
    a pattern (`{name=tenants/*/keys/*}`) keeps its literals and makes each `*` a parameter named
    after the literal before it (`tenants/{tenant}/keys/{key}`), described as part of `name`."""
    rpc = binding.rpc
    parts: list[str] = []
    params: list[dict[str, Any]] = []
    for segment in binding.template.segments:
        if not isinstance(segment, Variable):
            parts.append(segment)
            continue
        if segment.segments == ("*",):
            field = _resolve(rpc.input_descriptor, segment.field_path)
            schema = builder.single(field, _rules(field)) if field else {"type": "string"}
            if schema.get("type") == "string":
                schema = {**schema, "pattern": _segment_pattern(schema.get("pattern"))}
            # Parameter names without dots: OpenAPI tools treat `{a.b}` as a format field.
            name = segment.field_path.replace(".", "_")
            parts.append(f"{{{name}}}")
            params.append(
                _param(name, schema, segment.field_path if name != segment.field_path else "")
            )
            continue
        previous = ""
        for i, piece in enumerate(segment.segments):
            if piece not in ("*", "**"):
                parts.append(piece)
                previous = piece
                continue
            name = _singular(previous) if previous else f"{segment.field_path}_{i}"
            pattern = "^[^/]+$" if piece == "*" else "^.+$"
            parts.append(f"{{{name}}}")
            params.append(_param(name, {"type": "string", "pattern": pattern}, segment.field_path))
    path = "/" + "/".join(parts)
    if binding.template.verb:
        path += f":{binding.template.verb}"
    return path, params


def _param(name: str, schema: dict[str, Any], part_of: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": schema}
    if part_of:
        out["description"] = f"Sets (a segment of) the request field `{part_of}`."
    return out


def _segment_pattern(pattern: str | None) -> str:
    # One path segment: no '/', and the service's own pattern when it has one.
    return pattern if pattern else "^[^/]+$"


def _singular(literal: str) -> str:
    return literal[:-1] if literal.endswith("s") and len(literal) > 1 else literal + "_id"


def _resolve(desc: Descriptor, dotted: str) -> FieldDescriptor | None:
    field: FieldDescriptor | None = None
    current: Descriptor | None = desc
    for part in dotted.split("."):
        if current is None:
            return None
        field = current.fields_by_name.get(part)
        if field is None:
            return None
        current = field.message_type
    return field


def _query_parameters(binding: Binding, builder: _Builder) -> list[dict[str, Any]]:
    if binding.body == "*":
        return []
    covered = {binding.body, *binding.path_fields}
    out: list[dict[str, Any]] = []

    def walk(desc: Descriptor, prefix: str, proto_prefix: str, depth: int) -> None:
        for field in desc.fields:
            proto_name = proto_prefix + field.name
            if proto_name in covered or (not proto_prefix and field.name in covered):
                continue
            name = prefix + field.json_name
            if _is_map(field):
                continue
            is_message = field.type == F.TYPE_MESSAGE
            if is_message and field.message_type.full_name not in _WKT:
                if field.label != field.LABEL_REPEATED and depth < 3:
                    walk(field.message_type, name + ".", proto_name + ".", depth + 1)
                continue
            schema = builder.field(field, _rules(field))
            param: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
            if field.label == field.LABEL_REPEATED:
                param["style"] = "form"
                param["explode"] = True
            out.append(param)

    walk(binding.rpc.input_descriptor, "", "", 0)
    return out


def _operation(binding: Binding, builder: _Builder) -> dict[str, Any]:
    rpc = binding.rpc
    suffix = f"_{binding.index}" if binding.index else ""
    _, path_params = _path(binding, builder)
    op: dict[str, Any] = {
        "operationId": f"{rpc.service.rsplit('.', 1)[-1]}_{rpc.name}{suffix}",
        "tags": [rpc.service],
        "summary": f"{rpc.service}.{rpc.name}",
        "parameters": [*path_params, *_query_parameters(binding, builder)],
    }
    if rpc.comment:
        op["description"] = rpc.comment
    if binding.body:
        if binding.body == "*":
            body_schema = builder.ref(rpc.input_descriptor)
        else:
            body_field = rpc.input_descriptor.fields_by_name[binding.body]
            body_schema = builder.field(body_field, _rules(body_field))
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body_schema}},
        }
    if binding.response_body:
        out_field = rpc.output_descriptor.fields_by_name[binding.response_body]
        result = builder.field(out_field, _rules(out_field))
    else:
        result = builder.ref(rpc.output_descriptor)
    if rpc.server_streaming:
        line = {"type": "object", "properties": {"result": result, "error": _status_ref()}}
        content = {"application/x-ndjson": {"schema": line}, "text/event-stream": {}}
        ok = {"description": "A stream: one JSON object per line.", "content": content}
    else:
        ok = {"description": "OK", "content": {"application/json": {"schema": result}}}
    op["responses"] = {
        "200": ok,
        "default": {
            "description": "An error: google.rpc.Status (HTTP status by its code).",
            "content": {"application/json": {"schema": _status_ref()}},
        },
    }
    return op


def _status_ref() -> dict[str, Any]:
    return {"$ref": "#/components/schemas/google.rpc.Status"}


def build(
    api: Api,
    *,
    title: str = "Maestro Conductor API",
    version: str = "v1",
    comments: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every binding in `api`; `comments` (from
    `descriptors.message_comments`) become descriptions."""
    builder = _Builder(comments)
    paths: dict[str, dict[str, Any]] = {}
    for binding in sorted(api.bindings, key=lambda b: (b.template.source, b.http_method)):
        path = paths.setdefault(_path(binding, builder)[0], {})
        path[binding.http_method.lower()] = _operation(binding, builder)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "REST/JSON transcoded to the fleet's gRPC services from their "
            "google.api.http annotations; see docs/gateway.md.",
        },
        "security": [{"apiKey": []}, {"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": builder.schemas,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (mck_...) or an OIDC access token (JWT).",
                },
            },
        },
    }
