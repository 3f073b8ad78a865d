"""Redaction of secrets in decision inputs before they are explained or logged."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[-_]?key|authori[sz]ation|credential|private[-_]?key|"
    r"cookie|session|bearer|signature|ssn|card[-_]?number)",
    re.I,
)
_SECRET_VALUE = re.compile(
    r"^(Bearer\s+\S+|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*|"
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*|(sk|pk|ghp|xox[bp])[-_][A-Za-z0-9_-]{12,})$",
    re.S,
)
MAX_DEPTH = 32


def redact(value: Any, depth: int = 0) -> Any:
    """`value` with secret-looking keys' values and secret-looking strings replaced."""
    if depth > MAX_DEPTH:
        return REDACTED
    if isinstance(value, dict):
        return {
            k: REDACTED if _SECRET_KEY.search(str(k)) else redact(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, depth + 1) for v in value]
    if isinstance(value, str) and _SECRET_VALUE.match(value):
        return REDACTED
    return value
