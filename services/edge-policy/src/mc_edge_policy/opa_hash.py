"""OPA's bundle file digests: raw bytes for policy files, a canonical JSON walk for data files.

OPA hashes `data.json`, `data.yaml`, `.manifest` and `.signatures.json` ("structured" files) not
as bytes but as the JSON value they parse to: objects with keys sorted, no whitespace, strings
encoded the way Go's `encoding/json` does with HTML escaping off, and numbers exactly as they
were written (Go's `json.Number`). Everything else (`.rego`, `.wasm`) is hashed as raw bytes. A
digest that differs from OPA's by one byte makes a real `opa` refuse our bundles, so this module
is checked against OPA's own published vectors.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Callable
from typing import Any

# OPA's names for the algorithms its signature hasher knows, mapped to hashlib names.
HASH_ALGORITHMS: dict[str, str] = {
    "MD5": "md5",
    "SHA-1": "sha1",
    "SHA-224": "sha224",
    "SHA-256": "sha256",
    "SHA-384": "sha384",
    "SHA-512": "sha512",
    "SHA-512-224": "sha512_224",
    "SHA-512-256": "sha512_256",
}
DEFAULT_ALGORITHM = "SHA-256"
STRUCTURED_BASENAMES = frozenset({"data.json", "data.yaml", ".manifest", ".signatures.json"})
MAX_JSON_DEPTH = 64


class JsonNumber(str):
    """A JSON number kept as the literal it was written as (OPA hashes it unchanged)."""

    __slots__ = ()


class CanonicalJsonError(ValueError):
    """A structured bundle file that is not JSON OPA would accept."""


def is_structured(name: str) -> bool:
    """Whether OPA hashes `name` as parsed JSON rather than as bytes."""
    return posixpath.basename(name) in STRUCTURED_BASENAMES


def _reject_constant(name: str) -> Any:
    raise CanonicalJsonError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    """Parse JSON keeping numbers as written; NaN/Infinity (not JSON) are rejected."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(
            text,
            parse_int=JsonNumber,
            parse_float=JsonNumber,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CanonicalJsonError(f"invalid JSON: {exc}") from exc
    _check_depth(value, 0)
    return value


def _check_depth(value: Any, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise CanonicalJsonError(f"JSON nested deeper than {MAX_JSON_DEPTH}")
    if isinstance(value, dict):
        for item in value.values():
            _check_depth(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_depth(item, depth + 1)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b"}
_ESCAPES["\f"] = "\\f"


def go_json_string(value: str) -> str:
    """`value` as Go's encoding/json writes it with SetEscapeHTML(false).

    Go escapes `"`, `\\`, control characters and U+2028/U+2029, leaves other non-ASCII as
    UTF-8, and replaces invalid code points (here: lone surrogates) with U+FFFD.
    """
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def canonical_json(value: Any) -> bytes:
    """The bytes OPA's hasher feeds for a parsed JSON value (see module docstring)."""
    parts: list[str] = []
    _walk(value, parts.append)
    return "".join(parts).encode("utf-8")


def _walk(value: Any, write: Callable[[str], object]) -> None:
    if isinstance(value, dict):
        write("{")
        # Go sorts keys by their UTF-8 bytes; for valid strings that is code point order.
        for index, key in enumerate(sorted(value)):
            if index:
                write(",")
            write(go_json_string(key))
            write(":")
            _walk(value[key], write)
        write("}")
    elif isinstance(value, list):
        write("[")
        for index, item in enumerate(value):
            if index:
                write(",")
            _walk(item, write)
        write("]")
    elif isinstance(value, JsonNumber):
        write(str.__str__(value))
    elif isinstance(value, str):
        write(go_json_string(value))
    elif value is True:
        write("true")
    elif value is False:
        write("false")
    elif value is None:
        write("null")
    elif isinstance(value, int):
        write(str(value))
    elif isinstance(value, float):
        write(json.dumps(value))
    else:
        raise CanonicalJsonError(f"not a JSON value: {type(value).__name__}")


def hasher(algorithm: str) -> Callable[[bytes], str]:
    """A function returning the hex digest of bytes under OPA's `algorithm` name."""
    name = HASH_ALGORITHMS.get(algorithm)
    if name is None:
        raise ValueError(f"unsupported hashing algorithm: {algorithm}")
    return lambda data: hashlib.new(name, data).hexdigest()


def file_digest(name: str, content: bytes, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """OPA's hex digest of bundle file `name` with `content`."""
    digest = hasher(algorithm)
    if is_structured(name):
        if posixpath.basename(name) == "data.yaml":
            raise CanonicalJsonError("data.yaml is not supported; ship data.json")
        return digest(canonical_json(parse_json(content)))
    return digest(content)
