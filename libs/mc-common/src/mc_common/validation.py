"""Request validation against the rules declared in the protos (protoc-gen-validate).

`validate_request` raises InvalidArgument with one BadRequest field violation per broken rule,
each named by its full path (`content.subjects[1].sha256`). PGV reports only the leaf field of
a violation, so on failure we re-validate each embedded message and attribute every message to
the deepest message that produced it; the happy path costs one PGV call.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from protoc_gen_validate.validator import ValidationFailed, validate_all

from mc_common.errors import FieldViolation, InvalidArgument

_LEAF = re.compile(r"^(?:p\.)?(?P<field>[A-Za-z_][A-Za-z0-9_]*)\b")
_ONEOF = re.compile(r"^Oneof (?P<field>[A-Za-z_][A-Za-z0-9_]*) is required")


def _errors(message: Message) -> Counter[str]:
    try:
        validate_all(message)
    except ValidationFailed as failed:
        return Counter(line for line in str(failed).splitlines() if line.strip())
    return Counter()


def _children(message: Message, prefix: str) -> Iterator[tuple[str, Message]]:
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        path = f"{prefix}{field.name}"
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                for key, item in value.items():
                    yield f"{path}[{key!r}]", item
        elif field.is_repeated:
            for index, item in enumerate(value):
                yield f"{path}[{index}]", item
        else:
            yield path, value


def _attribute(message: Message, prefix: str, errors: Counter[str]) -> list[FieldViolation]:
    own = errors.copy()
    out: list[FieldViolation] = []
    for path, child in _children(message, prefix):
        child_errors = _errors(child)
        if child_errors:
            own -= child_errors
            out.extend(_attribute(child, f"{path}.", child_errors))
    for text, count in own.items():
        match = _ONEOF.match(text) or _LEAF.match(text)
        leaf = match.group("field") if match else ""
        description = text[2:] if text.startswith("p.") else text
        out.extend([FieldViolation(f"{prefix}{leaf}", description)] * count)
    return out


def field_violations(message: Message) -> list[FieldViolation]:
    """Every rule `message` breaks, as field violations with full paths; empty when valid."""
    errors = _errors(message)
    if not errors:
        return []
    return sorted(_attribute(message, "", errors), key=lambda v: v.field)


def validate_request(message: Message) -> None:
    """Raise InvalidArgument (with BadRequest details) when `message` breaks its proto rules."""
    violations = field_violations(message)
    if violations:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations[:5])
        raise InvalidArgument(f"invalid {message.DESCRIPTOR.name}: {summary}", violations)
