"""Typed errors of PQL: where a query is wrong, and why a valid query is refused."""

from __future__ import annotations

from collections.abc import Mapping

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PreconditionViolation,
    Reason,
)


class PqlSyntaxError(InvalidArgument):
    """The text is not PQL: `line`/`column` (1-based) point at the offending token."""

    def __init__(self, message: str, *, line: int, column: int, expected: str = "") -> None:
        where = f"line {line}, column {column}"
        text = f"PQL syntax error at {where}: {message}"
        if expected:
            text += f" (expected {expected})"
        super().__init__(
            text,
            [FieldViolation("query", f"{where}: {message}")],
            reason=ErrorReason.ERROR_REASON_PQL_SYNTAX,
            metadata={"line": str(line), "column": str(column), "expected": expected},
        )
        self.line = line
        self.column = column
        self.expected = expected


class PqlSemanticError(InvalidArgument):
    """The text parses, but names an unknown subject or field, mixes types, or breaks a rule
    of the language (for example a join other than receipts <-> decisions)."""

    def __init__(
        self,
        message: str,
        *,
        field: str = "query",
        reason: Reason = ErrorReason.ERROR_REASON_PQL_INVALID,
    ) -> None:
        super().__init__(message, [FieldViolation(field, message)], reason=reason)


class QueryRejected(FailedPrecondition):
    """A valid query that a guardrail refuses to run (too costly); the message says what to
    narrow."""

    def __init__(
        self,
        message: str,
        *,
        reason: Reason,
        guardrail: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            message,
            [PreconditionViolation(type=guardrail, subject="query", description=message)],
            reason=reason,
            metadata=metadata,
        )
        self.guardrail = guardrail
