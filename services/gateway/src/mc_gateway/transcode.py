"""HTTP request -> request message and response message -> JSON, by the binding's HTTP rule.

Rules (the google.api.http semantics):
- path variables set the fields they name (nested `a.b` paths included);
- `body: "*"` maps the whole JSON body onto the request; `body: "field"` maps it onto that
  top-level field; no body means the request has none (a non-empty one is refused);
- every other field can be set from the query string, by its JSON or proto name, nested with
  dots (`filter.state=X`); repeated fields repeat the parameter; messages other than the
  well-known scalar wrappers cannot be query parameters;
- path values win over body values for the same field;
- the proto3 JSON mapping applies throughout (`google.protobuf.json_format`), so 64-bit integers
  are strings, enums are names, bytes are base64, timestamps RFC 3339.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from mc_common.errors import FieldViolation, InvalidArgument
from mc_gateway.descriptors import Binding

MAX_DEPTH = 32  # nesting of JSON bodies; deeper is refused before parsing into a message

# Well-known types whose JSON form is a scalar, so they can be query parameters.
_SCALAR_WKT = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}


def build_request(
    binding: Binding,
    path_vars: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    body: bytes,
) -> Message:
    """The request message of `binding` from the parts of an HTTP request.

    Raises:
        InvalidArgument: malformed JSON, unknown fields, values of the wrong type.
    """
    rpc = binding.rpc
    tree: dict[str, Any] = {}
    if binding.body:
        parsed = _parse_body(body)
        if binding.body == "*":
            if not isinstance(parsed, dict):
                raise InvalidArgument.field("body", "the body must be a JSON object")
            tree = parsed
        elif parsed is not None:
            tree[binding.body] = parsed
    elif body.strip():
        raise InvalidArgument.field("body", "this method takes no request body")
    if binding.body != "*":
        covered = {binding.body, *binding.path_fields} - {""}
        for name, value in query:
            _set_query(rpc.input_descriptor, tree, name, value, covered)
    for field_path, value in path_vars.items():
        _set_path(tree, _proto_names(rpc.input_descriptor, field_path), value)
    message = rpc.input_type()
    try:
        json_format.ParseDict(tree, message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise InvalidArgument(
            f"request does not match {rpc.input_descriptor.full_name}: {exc}",
            [FieldViolation("body", str(exc))],
        ) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise InvalidArgument.field("body", f"unusable value: {exc}") from None
    return message


def render(message: Message, response_body: str = "") -> Any:
    """The JSON value of a response (or of its `response_body` field)."""
    as_dict = json_format.MessageToDict(message)
    if not response_body:
        return as_dict
    field = message.DESCRIPTOR.fields_by_name[response_body]
    return as_dict.get(field.json_name, _empty_json(field))


def _empty_json(field: FieldDescriptor) -> Any:
    if field.label == field.LABEL_REPEATED:
        return {} if _is_map(field) else []
    if field.type == field.TYPE_MESSAGE:
        return {}
    return None


def _parse_body(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidArgument.field("body", f"not JSON: {exc}") from None
    if _depth(parsed) > MAX_DEPTH:
        raise InvalidArgument.field("body", f"JSON nested deeper than {MAX_DEPTH}")
    return parsed


def _depth(value: Any) -> int:
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _proto_names(desc: Descriptor, dotted: str) -> list[str]:
    """Resolve `a.b` (JSON or proto names) to proto field names, or raise InvalidArgument."""
    names: list[str] = []
    current: Descriptor | None = desc
    for part in dotted.split("."):
        field = _field(current, part) if current is not None else None
        if field is None:
            raise InvalidArgument.field(dotted, "no such field")
        names.append(field.name)
        current = field.message_type
    return names


def _field(desc: Descriptor, name: str) -> FieldDescriptor | None:
    field: FieldDescriptor | None = desc.fields_by_name.get(name)
    if field is not None:
        return field
    found: FieldDescriptor | None = next((f for f in desc.fields if f.json_name == name), None)
    return found


def _set_path(tree: dict[str, Any], names: list[str], value: str) -> None:
    node = tree
    for name in names[:-1]:
        child = node.get(name)
        if not isinstance(child, dict):
            child = node[name] = {}
        node = child
    node[names[-1]] = value


def _set_query(
    desc: Descriptor, tree: dict[str, Any], name: str, value: str, covered: set[str]
) -> None:
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = desc
    for part in name.split("."):
        field = _field(current, part) if current is not None else None
        if field is None:
            raise InvalidArgument.field(name, "no such query parameter")
        fields.append(field)
        current = field.message_type if field.type == field.TYPE_MESSAGE else None
        if field.message_type is not None and field.message_type.full_name in _SCALAR_WKT:
            current = None
            break
    if len(fields) != len(name.split(".")):
        raise InvalidArgument.field(name, "no such query parameter")
    top = fields[0].name
    dotted = ".".join(f.name for f in fields)
    if top in covered or dotted in covered:
        raise InvalidArgument.field(name, "set by the path or the body, not the query")
    leaf = fields[-1]
    if leaf.type == leaf.TYPE_MESSAGE and leaf.message_type.full_name not in _SCALAR_WKT:
        raise InvalidArgument.field(name, "a message cannot be a query parameter")
    if _is_map(leaf):
        raise InvalidArgument.field(name, "a map cannot be a query parameter")
    node = tree
    for f in fields[:-1]:
        if f.label == f.LABEL_REPEATED:
            raise InvalidArgument.field(name, "cannot address inside a repeated field")
        child = node.setdefault(f.name, {})
        if not isinstance(child, dict):
            raise InvalidArgument.field(name, "conflicting query parameters")
        node = child
    if leaf.label == leaf.LABEL_REPEATED:
        existing = node.setdefault(leaf.name, [])
        if not isinstance(existing, list):
            raise InvalidArgument.field(name, "conflicting query parameters")
        existing.append(_coerce(leaf, value))
    elif leaf.name in node:
        raise InvalidArgument.field(name, "given more than once")
    else:
        node[leaf.name] = _coerce(leaf, value)


def _coerce(field: FieldDescriptor, value: str) -> Any:
    """A query or path string as its JSON value: JSON booleans are not strings."""
    wrapped = field.message_type is not None and field.message_type.full_name == (
        "google.protobuf.BoolValue"
    )
    if field.type == field.TYPE_BOOL or wrapped:
        return {"true": True, "false": False}.get(value, value)
    return value


def _is_map(field: FieldDescriptor) -> bool:
    return bool(
        field.type == field.TYPE_MESSAGE
        and field.message_type is not None
        and field.message_type.GetOptions().map_entry
    )
