"""Hypothesis strategies for any protobuf message, from its descriptor, and byte mutations.

`messages(descriptor)` generates messages of any type a server exposes, with the values hostile
and careless clients send: NUL and control characters, over-long and non-ASCII text, boundary
integers, out-of-range timestamps, unknown enum numbers, deep and empty nesting, and a share
of plausible values (ids, hex digests, tenants) so generated requests also get past the first
check. `mutated(data)` corrupts serialized bytes (flips, truncation, insertion, stray fields).
Used by the fleet-wide fuzz suite (`tests/fuzz`), which discovers every RPC of every service.
"""

from __future__ import annotations

import string
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

MAX_DEPTH = 4

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT32 = (0, 2**32 - 1)
_UINT64 = (0, 2**64 - 1)

PLAUSIBLE_TEXT = (
    "",
    "a",
    "fuzz-a",
    "acme",
    "exec-1",
    "d-1",
    "USD",
    "succeeded",
    "us-east-1",
    "mc.limits@1",
    "ab" * 32,
    "0" * 64,
    "2026-11-01T12:00:00Z",
    "tenant:acme",
    "operator:root",
    "*",
    "x" * 129,
    "x" * 5000,
    "a\x00b",
    "\x00",
    "caf\u00e9",
    "\U0001f600" * 3,
    "../../etc/passwd",
    "' OR 1=1 --",
    "%s%n",
    "\r\n\t",
)

_TEXT = st.one_of(
    st.sampled_from(PLAUSIBLE_TEXT),
    # A plausible value with one NUL or control character in it: gets past the first checks.
    st.builds(
        lambda text, char, at: text[:at] + char + text[at:],
        st.sampled_from(PLAUSIBLE_TEXT[:12]),
        st.sampled_from(["\x00", "\x01", "\x1f", "\x7f", "\u2028"]),
        st.integers(0, 3),
    ),
    st.text(max_size=40),
    st.text(alphabet=string.ascii_lowercase + string.digits + "-._:", min_size=1, max_size=70),
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=8),
)
_BYTES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"{}", b"[]", b"null", b'{"payload":"","payloadType":"x"}']),
)


def _ints(bounds: tuple[int, int]) -> st.SearchStrategy[int]:
    low, high = bounds
    return st.one_of(
        st.sampled_from(sorted({low, high, 0, 1, -1 if low < 0 else 2, high // 2})),
        st.integers(min_value=low, max_value=high),
        st.integers(min_value=max(low, -1000), max_value=min(high, 1000)),
    )


def _timestamp_like(cls: type[Message]) -> st.SearchStrategy[Message]:
    seconds = st.one_of(
        st.sampled_from(
            [
                0,
                1_780_000_000,
                253_402_300_799,  # 9999-12-31T23:59:59Z
                253_402_300_800,  # 10000-01-01
                -62_135_596_800,  # 0001-01-01
                -62_135_596_801,
                *_INT64,
            ]
        ),
        st.integers(*_INT64),
    )
    nanos = st.one_of(st.sampled_from([0, 999_999_999, 1_000_000_000, -1]), st.integers(*_INT32))
    return st.builds(lambda s, n: cls(seconds=s, nanos=n), seconds, nanos)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _TEXT
    if kind == FieldDescriptor.TYPE_BYTES:
        return _BYTES
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(*_INT32))
    if kind in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return _ints(_INT32)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return _ints(_UINT32)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return _ints(_UINT64)
    return _ints(_INT64)


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type, each field set or not, values hostile or plausible."""
    cls = GetMessageClass(descriptor)
    if descriptor.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        return _timestamp_like(cls)
    if depth >= MAX_DEPTH:
        return st.just(cls())
    fields = [f for f in descriptor.fields]
    return st.fixed_dictionaries(
        {},
        optional={f.name: _field_values(f, depth) for f in fields},
    ).map(lambda values: _build(cls, values))


def _field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key = _scalar(field.message_type.fields_by_name["key"])
        value_field = field.message_type.fields_by_name["value"]
        value = (
            messages(value_field.message_type, depth + 1)
            if value_field.message_type is not None
            else _scalar(value_field)
        )
        return st.dictionaries(key, value, max_size=3)
    single = (
        st.deferred(lambda: messages(field.message_type, depth + 1))
        if field.message_type is not None
        else _scalar(field)
    )
    if field.is_repeated:
        return st.lists(single, max_size=3)
    return single


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        field = cls.DESCRIPTOR.fields_by_name[name]
        try:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                target = getattr(message, name)
                for key, item in value.items():
                    if isinstance(item, Message):
                        target[key].CopyFrom(item)
                    else:
                        target[key] = item
            elif field.is_repeated:
                target = getattr(message, name)
                if field.message_type is not None:
                    for item in value:
                        target.add().CopyFrom(item)
                else:
                    target.extend(value)
            elif field.message_type is not None:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        except (ValueError, TypeError):
            continue  # a value the runtime refuses to set (e.g. a closed enum): leave it unset
    return message


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` corrupted the ways a broken or hostile client corrupts a request."""
    mutation = draw(st.sampled_from(["flip", "truncate", "insert", "append-field", "garbage"]))
    buffer = bytearray(data)
    if mutation == "flip" and buffer:
        index = draw(st.integers(0, len(buffer) - 1))
        buffer[index] ^= draw(st.integers(1, 255))
    elif mutation == "truncate" and buffer:
        del buffer[draw(st.integers(0, len(buffer) - 1)) :]
    elif mutation == "insert":
        index = draw(st.integers(0, len(buffer)))
        buffer[index:index] = draw(st.binary(min_size=1, max_size=8))
    elif mutation == "append-field":
        # A field number the message may not know, with a valid or broken length prefix.
        tag = draw(st.integers(1, 2**29 - 1)) << 3 | 2
        length = draw(st.integers(0, 2**31))
        buffer += _varint(tag) + _varint(length) + draw(st.binary(max_size=16))
    else:
        return draw(st.binary(max_size=64))
    return bytes(buffer)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


HOSTILE_TEXT = ("a\x00b", "x" * 100_000, "\u2028\x1f")
HOSTILE_SECONDS = (253_402_300_800, -62_135_596_801, 2**63 - 1)


def hostile_variants(descriptor: Descriptor, depth: int = 0) -> list[Message]:
    """Messages with exactly one field (up to two levels deep) set to a hostile value, all
    else unset: a deterministic sweep that reaches what random generation rarely combines."""
    cls = GetMessageClass(descriptor)
    out: list[Message] = []
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for text in HOSTILE_TEXT[:1]:
                message = cls()
                target = getattr(message, field.name)
                value_field = field.message_type.fields_by_name["value"]
                if field.message_type.fields_by_name["key"].type != FieldDescriptor.TYPE_STRING:
                    continue
                if value_field.type == FieldDescriptor.TYPE_STRING:
                    target[text] = "v"
                    out.append(message)
            continue
        if field.message_type is not None:
            name = field.message_type.full_name
            if name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
                for seconds in HOSTILE_SECONDS:
                    message = cls()
                    inner = getattr(message, field.name)
                    inner = inner.add() if field.is_repeated else inner
                    inner.seconds = seconds
                    out.append(message)
            elif depth < 1:
                for variant in hostile_variants(field.message_type, depth + 1):
                    message = cls()
                    inner = getattr(message, field.name)
                    (inner.add() if field.is_repeated else inner).CopyFrom(variant)
                    out.append(message)
            continue
        if field.type == FieldDescriptor.TYPE_STRING:
            for text in HOSTILE_TEXT:
                message = cls()
                if field.is_repeated:
                    getattr(message, field.name).append(text)
                else:
                    setattr(message, field.name, text)
                out.append(message)
    return out
