"""PQL tokens: keywords (case-insensitive), identifiers, literals, parameters and operators,
each with the line and column where it starts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from mc_pql.query.ast import Position
from mc_pql.query.errors import PqlSyntaxError

KEYWORDS: Final = frozenset(
    {
        "FIND", "JOIN", "ON", "WHERE", "GROUP", "BY", "BUCKET", "TOP", "SINCE", "LIMIT",
        "AND", "OR", "NOT", "IN", "TRUE", "FALSE",
        "COUNT", "SUM", "AVG", "MIN", "MAX",
    }
)  # fmt: skip

DURATION_UNITS: Final = {
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}

MAX_STRING_LITERAL: Final = 1024
"""Longest string literal, in characters: no field PQL reads holds more."""

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<comment>--[^\n]*)
  | (?P<duration>[0-9]+(?:s|m|h|d|w)(?![A-Za-z0-9_]))
  | (?P<number>[0-9]+(?:\.[0-9]+)?(?![A-Za-z0-9_.]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<param>:[A-Za-z_][A-Za-z0-9_]*)
  | (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
  | (?P<op><=|>=|!=|<>|[=<>(),.*])
  | (?P<badnumber>[0-9][0-9A-Za-z_.]*)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Token:
    """`kind` is KEYWORD, IDENT, STRING, NUMBER, DURATION, PARAM, OP or EOF."""

    kind: str
    text: str
    value: object
    pos: Position

    def describe(self) -> str:
        if self.kind == "EOF":
            return "end of query"
        return repr(self.text)


def tokenize(text: str) -> list[Token]:
    """Split `text` into tokens, ending with an EOF token; raise `PqlSyntaxError` on a
    character no token can start with, or an unterminated string."""
    tokens: list[Token] = []
    index, line, line_start = 0, 1, 0
    while index < len(text):
        pos = Position(line, index - line_start + 1)
        match = _TOKEN.match(text, index)
        if match is None:
            char = text[index]
            if char in "'\"":
                raise PqlSyntaxError(
                    "unterminated string literal", line=pos.line, column=pos.column,
                    expected=f"a closing {char}",
                )  # fmt: skip
            shown = repr(char) if char.isprintable() else f"U+{ord(char):04X}"
            raise PqlSyntaxError(f"unexpected character {shown}", line=pos.line, column=pos.column)
        kind = match.lastgroup or ""
        raw = match.group()
        if kind not in ("ws", "comment"):
            tokens.append(_token(kind, raw, pos))
        newlines = raw.count("\n")
        if newlines:
            line += newlines
            line_start = index + raw.rindex("\n") + 1
        index = match.end()
    tokens.append(Token("EOF", "", None, Position(line, index - line_start + 1)))
    return tokens


def _token(kind: str, raw: str, pos: Position) -> Token:
    if kind == "ident":
        upper = raw.upper()
        if upper in KEYWORDS:
            return Token("KEYWORD", upper, upper, pos)
        return Token("IDENT", raw, raw, pos)
    if kind == "string":
        quote = raw[0]
        value = raw[1:-1].replace(quote * 2, quote)
        if "\x00" in value:
            raise PqlSyntaxError(
                "string literal contains a NUL character", line=pos.line, column=pos.column
            )
        if len(value) > MAX_STRING_LITERAL:
            raise PqlSyntaxError(
                f"string literal longer than {MAX_STRING_LITERAL} characters",
                line=pos.line,
                column=pos.column,
            )
        return Token("STRING", raw, value, pos)
    if kind == "number":
        if len(raw) > 30:
            raise PqlSyntaxError("number too long", line=pos.line, column=pos.column)
        return Token("NUMBER", raw, float(raw) if "." in raw else int(raw), pos)
    if kind == "duration":
        amount = int(raw[:-1])
        if amount > 100_000:
            raise PqlSyntaxError("duration too large", line=pos.line, column=pos.column)
        return Token("DURATION", raw, amount * DURATION_UNITS[raw[-1]], pos)
    if kind == "badnumber":
        raise PqlSyntaxError(
            f"{raw!r} is neither a number nor a duration",
            line=pos.line,
            column=pos.column,
            expected="a number like 42 or 2.5, or a duration like 30d (units s, m, h, d, w)",
        )
    if kind == "param":
        return Token("PARAM", raw, raw[1:], pos)
    return Token("OP", "!=" if raw == "<>" else raw, raw, pos)
