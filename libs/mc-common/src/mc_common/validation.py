"""Request validation against the rules declared in the protos (protoc-gen-validate).

Beside the declared rules, two rules hold for every field of every MC message (ADR 0030),
because no store or clock of the fleet can honour them otherwise: text never contains NUL
(Postgres `text` cannot hold it), and `google.protobuf.Timestamp`/`Duration` values are inside
the ranges their own definitions allow (years 1 to 9999; nanos within a second).

`validate_request` raises InvalidArgument with one BadRequest field violation per broken rule,
each named by its full path (`content.subjects[1].sha256`). PGV reports only the leaf field of
a violation, so on failure we re-validate each embedded message and attribute every message to
the deepest message that produced it; the happy path costs one PGV call.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

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
    universal = universal_violations(message)
    if not errors:
        return universal
    return sorted([*_attribute(message, "", errors), *universal], key=lambda v: v.field)


# google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799
DURATION_MAX_SECONDS = 315_576_000_000  # google.protobuf.Duration: +-10,000 years
_NANOS = 1_000_000_000
_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"


def universal_violations(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Violations of the rules every MC field obeys: no NUL in text, timestamps and durations
    in range. Messages outside MC's packages (Envoy's, for one) follow their own contracts and
    their servicers decide; their embedded MC messages are not checked here either."""
    if not message.DESCRIPTOR.full_name.startswith("mc."):
        return []
    out: list[FieldViolation] = []
    _walk(message, prefix, out)
    return out


def _walk(message: Message, prefix: str, out: list[FieldViolation]) -> None:
    name = message.DESCRIPTOR.full_name
    if name == _TIMESTAMP:
        seconds, nanos = message.seconds, message.nanos  # type: ignore[attr-defined]
        if not (TIMESTAMP_MIN_SECONDS <= seconds <= TIMESTAMP_MAX_SECONDS and 0 <= nanos < _NANOS):
            out.append(
                FieldViolation(
                    prefix.rstrip("."),
                    "timestamp must be between 0001-01-01T00:00:00Z and "
                    "9999-12-31T23:59:59.999999999Z",
                )
            )
        return
    if name == _DURATION:
        seconds, nanos = message.seconds, message.nanos  # type: ignore[attr-defined]
        same_sign = seconds == 0 or nanos == 0 or (seconds > 0) == (nanos > 0)
        if not (abs(seconds) <= DURATION_MAX_SECONDS and abs(nanos) < _NANOS and same_sign):
            out.append(FieldViolation(prefix.rstrip("."), "duration out of range"))
        return
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            items = value if field.is_repeated else (value,)
            for index, text in enumerate(items):
                if "\x00" in text:
                    where = f"{path}[{index}]" if field.is_repeated else path
                    out.append(FieldViolation(where, "must not contain NUL characters"))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                _walk_map(field, value, path, out)
            elif field.is_repeated:
                for index, item in enumerate(value):
                    _walk(item, f"{path}[{index}].", out)
            else:
                _walk(value, f"{path}.", out)


def _walk_map(field: FieldDescriptor, value: Any, path: str, out: list[FieldViolation]) -> None:
    key_field = field.message_type.fields_by_name["key"]
    value_field = field.message_type.fields_by_name["value"]
    for key, item in value.items():
        if key_field.type == FieldDescriptor.TYPE_STRING and "\x00" in key:
            out.append(FieldViolation(f"{path}[{key!r}]", "keys must not contain NUL characters"))
        if value_field.type == FieldDescriptor.TYPE_STRING and "\x00" in item:
            out.append(FieldViolation(f"{path}[{key!r}]", "must not contain NUL characters"))
        elif value_field.type == FieldDescriptor.TYPE_MESSAGE:
            _walk(item, f"{path}[{key!r}].", out)


def validate_request(message: Message) -> None:
    """Raise InvalidArgument (with BadRequest details) when `message` breaks its proto rules."""
    violations = field_violations(message)
    if violations:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations[:5])
        raise InvalidArgument(f"invalid {message.DESCRIPTOR.name}: {summary}", violations)
