"""RFC 8785 JSON Canonicalization Scheme (JCS) for float-free JSON, plus a strict JSON parser.

Receipts never contain floats, so the only JCS rules that matter are: UTF-8 output, no
whitespace, object members sorted by the UTF-16 code units of their names, ECMAScript string
escaping, and integers written in plain decimal. Floats are rejected (``FloatNotAllowedError``)
and so are integers outside +/-(2**53 - 1), which JCS cannot represent exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from pydantic_core import PydanticSerializationError, to_json

from mc_common.receipts.errors import CanonicalizationError, FloatNotAllowedError, JsonFormatError

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer an RFC 8785 (IEEE-754 double) number holds exactly."""

JsonValue = None | bool | int | str | list["JsonValue"] | dict[str, "JsonValue"]
"""The JSON values receipts may contain (no floats)."""


def canonicalize(value: object) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of ``value``.

    Accepts dicts with string keys, lists/tuples, str, int, bool and None; raises
    ``FloatNotAllowedError`` for floats and ``CanonicalizationError`` for anything else
    (unsafe integers, lone surrogates, non-string keys, other types).
    """
    plain = _sorted_plain(value)
    if plain is not _NOT_PLAIN:
        # Fast path: for plain values whose keys sort the same by code point and by UTF-16
        # code unit, pydantic-core's JSON writer (serde_json: no whitespace, raw UTF-8,
        # ECMAScript escapes) on the key-sorted copy *is* RFC 8785.
        try:
            return to_json(plain)
        except PydanticSerializationError:
            pass  # a lone surrogate: the general writer names it
    parts: list[str] = []
    _write(value, parts, "$")
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalizationError(
            f"string is not valid Unicode (lone surrogate?): {exc}"
        ) from exc


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def canonical_digest(value: object) -> str:
    """Hex SHA-256 of the canonical form of ``value``."""
    return sha256_hex(canonicalize(value))


def parse_json_strict(data: bytes | str) -> JsonValue:
    """Parse JSON strictly: UTF-8 only, no BOM, no duplicate keys, no floats/NaN/Infinity.

    Raises ``FloatNotAllowedError`` for non-integer numbers and ``JsonFormatError`` otherwise.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonFormatError(f"not valid UTF-8: {exc}") from exc
    else:
        text = data
    try:
        value: JsonValue = json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_float=_reject_float,
            parse_int=_safe_int,
            parse_constant=_reject_constant,
        )
    except json.JSONDecodeError as exc:
        raise JsonFormatError(f"not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise JsonFormatError("JSON nesting is too deep") from exc
    return value


def is_canonical(data: bytes) -> bool:
    """Whether ``data`` is exactly the canonical form of the JSON it encodes."""
    try:
        return canonicalize(parse_json_strict(data)) == data
    except (JsonFormatError, CanonicalizationError):
        return False


_UTF16_ORDER_DIFFERS = "\ud800"  # keys with any char >= U+D800 may sort differently in UTF-16


_NOT_PLAIN: Any = object()


def _sorted_plain(value: Any) -> Any:
    """A copy of ``value`` with every object's members in sorted order, or ``_NOT_PLAIN`` when
    the fast path would not give the right bytes (the general writer then runs, and produces
    the precise error for an invalid value)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else _NOT_PLAIN
    if kind is dict:
        try:
            keys = sorted(value)
        except TypeError:  # keys of types that do not compare
            return _NOT_PLAIN
        out = {}
        for key in keys:
            if type(key) is not str or not (key.isascii() or max(key) < _UTF16_ORDER_DIFFERS):
                return _NOT_PLAIN
            item = value[key]
            if type(item) is not str:
                item = _sorted_plain(item)
                if item is _NOT_PLAIN:
                    return _NOT_PLAIN
            out[key] = item
        return out
    if kind is list or kind is tuple:
        items = []
        for item in value:
            if type(item) is not str:
                item = _sorted_plain(item)
                if item is _NOT_PLAIN:
                    return _NOT_PLAIN
            items.append(item)
        return items
    return _NOT_PLAIN


def _write(value: object, out: list[str], path: str) -> None:
    # bool before int: bool is an int subclass.
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise CanonicalizationError(f"{path}: integer {value} is outside +/-(2**53 - 1)")
        out.append(str(int(value)))
    elif isinstance(value, float):
        raise FloatNotAllowedError(f"{path}: floats are not allowed in receipts ({value!r})")
    elif isinstance(value, str):
        out.append(_quote(value))
    elif isinstance(value, Mapping):
        out.append("{")
        for index, key in enumerate(_sorted_keys(value, path)):
            if index:
                out.append(",")
            out.append(_quote(key))
            out.append(":")
            _write(value[key], out, f"{path}.{key}")
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out, f"{path}[{index}]")
        out.append("]")
    else:
        raise CanonicalizationError(f"{path}: {type(value).__name__} is not a JSON value")


def _sorted_keys(obj: Mapping[Any, Any], path: str) -> list[str]:
    keys = list(obj.keys())
    for key in keys:
        if not isinstance(key, str):
            raise CanonicalizationError(f"{path}: object key {key!r} is not a string")
    # RFC 8785 sorts by UTF-16 code units, which differs from code-point order for
    # characters above U+FFFF versus U+E000..U+FFFF.
    try:
        return sorted(keys, key=lambda k: k.encode("utf-16-be"))
    except UnicodeEncodeError as exc:
        raise CanonicalizationError(f"{path}: object key is not valid Unicode: {exc}") from exc


def _quote(text: str) -> str:
    # With ensure_ascii=False json.dumps escapes exactly what ECMAScript JSON.stringify does
    # (quote, backslash, \b \f \n \r \t, other controls as lowercase \u00xx).
    return json.dumps(text, ensure_ascii=False)


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JsonFormatError(f"duplicate object key {key!r}")
        result[key] = value
    return result


def _reject_float(text: str) -> NoReturn:
    raise FloatNotAllowedError(f"non-integer number {text} is not allowed")


def _reject_constant(text: str) -> NoReturn:
    raise JsonFormatError(f"{text} is not valid JSON")


def _safe_int(text: str) -> int:
    if len(text.lstrip("-")) > 16:  # 2**53 has 16 digits; also avoids int()'s digit limit
        raise JsonFormatError(f"integer {text[:32]} is outside +/-(2**53 - 1)")
    value = int(text)
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise JsonFormatError(f"integer {text} is outside +/-(2**53 - 1)")
    return value
