"""Recursive-descent parser of PQL (grammar in docs/pql.md); errors name line, column and
what was expected. Nesting and list lengths are bounded so no input can exhaust the stack."""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Final, cast

from mc_pql.query.ast import (
    Aggregate,
    AggregateName,
    And,
    Compare,
    Comparison,
    FieldRef,
    InList,
    Join,
    Literal_,
    Not,
    Operand,
    Or,
    Param,
    Position,
    Predicate,
    Query,
    Top,
)
from mc_pql.query.errors import PqlSyntaxError
from mc_pql.query.lexer import Token, tokenize

GRAMMAR_VERSION: Final = "1.2"
"""The language version this parser implements (PQL 1.1 plus BUCKET BY and TOP k)."""

MAX_QUERY_CHARS: Final = 8192
MAX_NESTING: Final = 32
MAX_PREDICATES: Final = 128
MAX_IN_VALUES: Final = 1000
MAX_AGGREGATES: Final = 8
MAX_GROUP_FIELDS: Final = 4

_AGGREGATES: Final = ("COUNT", "SUM", "AVG", "MIN", "MAX")
_COMPARISONS: Final = ("=", "!=", "<", "<=", ">", ">=")
_CLAUSE_START: Final = "JOIN, WHERE, GROUP BY, BUCKET BY, TOP, SINCE, LIMIT"


@functools.lru_cache(maxsize=2048)
def parse(text: str) -> Query:
    """Parse one PQL query; raise `PqlSyntaxError` (INVALID_ARGUMENT) if it is not PQL.

    Results are cached by text (the AST is immutable): dashboards repeat their queries."""
    if len(text) > MAX_QUERY_CHARS:
        raise PqlSyntaxError(
            f"query longer than {MAX_QUERY_CHARS} characters", line=1, column=MAX_QUERY_CHARS
        )
    return _Parser(tokenize(text)).query()


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self._tokens = tokens
        self._index = 0
        self._predicates = 0

    # -- token helpers ------------------------------------------------------------------

    def _peek(self) -> Token:
        return self._tokens[self._index]

    def _next(self) -> Token:
        token = self._tokens[self._index]
        if token.kind != "EOF":
            self._index += 1
        return token

    def _fail(self, token: Token, expected: str, message: str | None = None) -> PqlSyntaxError:
        return PqlSyntaxError(
            message or f"unexpected {token.describe()}",
            line=token.pos.line,
            column=token.pos.column,
            expected=expected,
        )

    def _is_keyword(self, *words: str) -> bool:
        token = self._peek()
        return token.kind == "KEYWORD" and token.text in words

    def _keyword(self, word: str) -> Token:
        token = self._next()
        if token.kind != "KEYWORD" or token.text != word:
            raise self._fail(token, word)
        return token

    def _op(self, op: str) -> Token:
        token = self._next()
        if token.kind != "OP" or token.text != op:
            raise self._fail(token, repr(op))
        return token

    def _is_op(self, op: str) -> bool:
        token = self._peek()
        return token.kind == "OP" and token.text == op

    def _ident(self, what: str) -> Token:
        token = self._next()
        if token.kind != "IDENT":
            raise self._fail(token, what)
        return token

    def _integer(self, what: str, *, low: int, high: int) -> int:
        token = self._next()
        if token.kind != "NUMBER" or not isinstance(token.value, int):
            raise self._fail(token, what)
        if not low <= token.value <= high:
            raise self._fail(
                token, f"{what} from {low} to {high}", f"{token.value} is out of range"
            )
        return token.value

    # -- grammar -----------------------------------------------------------------------

    def query(self) -> Query:
        self._keyword("FIND")
        subject, subject_pos, aggregates = self._selection()
        join = self._join() if self._is_keyword("JOIN") else None
        where = None
        if self._is_keyword("WHERE"):
            self._next()
            where = self._predicate(0)
        group_by: tuple[FieldRef, ...] = ()
        if self._is_keyword("GROUP"):
            self._next()
            self._keyword("BY")
            group_by = self._field_list()
        bucket = None
        if self._is_keyword("BUCKET"):
            self._next()
            self._keyword("BY")
            bucket = self._duration("a bucket width: 1m, 5m, 1h or 1d")
        top = self._top() if self._is_keyword("TOP") else None
        since = None
        if self._is_keyword("SINCE"):
            self._next()
            since = self._duration("a duration like 30d, 12h or 15m")
        limit = None
        if self._is_keyword("LIMIT"):
            self._next()
            limit = self._integer("a row limit", low=1, high=1_000_000)
        end = self._peek()
        if end.kind != "EOF":
            raise self._fail(end, f"one of {_CLAUSE_START}, or the end of the query")
        return Query(
            subject=subject,
            subject_pos=subject_pos,
            aggregates=aggregates,
            join=join,
            where=where,
            group_by=group_by,
            bucket=bucket,
            top=top,
            since=since,
            limit=limit,
        )

    def _selection(self) -> tuple[str, Position, tuple[Aggregate, ...]]:
        token = self._peek()
        if token.kind == "IDENT":
            self._next()
            return token.text, token.pos, ()
        if not self._is_keyword(*_AGGREGATES):
            raise self._fail(
                token,
                "a subject (executions, receipts, decisions) or an aggregate like COUNT(receipts)",
            )
        aggregates = [self._aggregate()]
        while self._is_op(","):
            self._next()
            if len(aggregates) >= MAX_AGGREGATES:
                raise self._fail(self._peek(), f"at most {MAX_AGGREGATES} aggregates")
            aggregates.append(self._aggregate())
        subjects = [a.subject or (a.field.subject if a.field else None) for a in aggregates]
        named = [s for s in subjects if s]
        if not named:
            first = aggregates[0]
            raise PqlSyntaxError(
                "an aggregate must name its subject",
                line=first.pos.line,
                column=first.pos.column,
                expected="COUNT(receipts) or SUM(receipts.cost)",
            )
        return named[0], aggregates[0].pos, tuple(aggregates)

    def _aggregate(self) -> Aggregate:
        token = self._next()
        fn = cast(AggregateName, token.text)
        self._op("(")
        inner = self._peek()
        field: FieldRef | None = None
        subject: str | None = None
        if fn == "COUNT" and inner.kind == "OP" and inner.text == "*":
            self._next()
        elif inner.kind == "IDENT":
            ref = self._field()
            if fn == "COUNT" and ref.subject is None:
                subject = ref.name  # COUNT(receipts): rows of a subject
            else:
                field = ref
        else:
            raise self._fail(inner, "a field" if fn != "COUNT" else "*, a subject or a field")
        self._op(")")
        return Aggregate(fn=fn, field=field, subject=subject, pos=token.pos)

    def _join(self) -> Join:
        token = self._keyword("JOIN")
        subject = self._ident("the joined subject (decisions or receipts)")
        self._keyword("ON")
        left = self._field()
        self._op("=")
        right = self._field()
        return Join(subject=subject.text, left=left, right=right, pos=token.pos)

    def _top(self) -> Top:
        token = self._keyword("TOP")
        k = self._integer("the number of results k", low=1, high=1000)
        self._keyword("BY")
        by: FieldRef | Aggregate
        by = self._aggregate() if self._is_keyword(*_AGGREGATES) else self._field()
        return Top(k=k, by=by, pos=token.pos)

    def _field_list(self) -> tuple[FieldRef, ...]:
        fields = [self._field()]
        while self._is_op(","):
            self._next()
            if len(fields) >= MAX_GROUP_FIELDS:
                raise self._fail(self._peek(), f"at most {MAX_GROUP_FIELDS} GROUP BY fields")
            fields.append(self._field())
        return tuple(fields)

    def _field(self) -> FieldRef:
        first = self._ident("a field name")
        if not self._is_op("."):
            return FieldRef(subject=None, name=first.text, pos=first.pos)
        self._next()
        second = self._ident("a field name after '.'")
        if self._is_op("."):  # receipts.label.team or label.team with a subject
            self._next()
            third = self._ident("a label key after '.'")
            return FieldRef(subject=first.text, name=f"{second.text}.{third.text}", pos=first.pos)
        return FieldRef(subject=first.text, name=second.text, pos=first.pos)

    def _duration(self, expected: str) -> timedelta:
        token = self._next()
        if token.kind != "DURATION" or not isinstance(token.value, timedelta):
            raise self._fail(token, expected)
        return token.value

    # predicate = disjunction; precedence NOT > AND > OR
    def _predicate(self, depth: int) -> Predicate:
        left = self._conjunction(depth)
        while self._is_keyword("OR"):
            self._next()
            left = Or(left, self._conjunction(depth))
        return left

    def _conjunction(self, depth: int) -> Predicate:
        left = self._negation(depth)
        while self._is_keyword("AND"):
            self._next()
            left = And(left, self._negation(depth))
        return left

    def _negation(self, depth: int) -> Predicate:
        if depth >= MAX_NESTING:
            raise self._fail(self._peek(), f"at most {MAX_NESTING} levels of NOT and parentheses")
        if self._is_keyword("NOT"):
            self._next()
            return Not(self._negation(depth + 1))
        if self._is_op("("):
            self._next()
            inner = self._predicate(depth + 1)
            self._op(")")
            return inner
        return self._comparison()

    def _comparison(self) -> Predicate:
        self._predicates += 1
        if self._predicates > MAX_PREDICATES:
            raise self._fail(self._peek(), f"at most {MAX_PREDICATES} comparisons")
        field = self._field()
        token = self._peek()
        if token.kind == "KEYWORD" and token.text in ("IN", "NOT"):
            negated = token.text == "NOT"
            self._next()
            if negated:
                self._keyword("IN")
            self._op("(")
            values = [self._operand()]
            while self._is_op(","):
                self._next()
                if len(values) >= MAX_IN_VALUES:
                    raise self._fail(self._peek(), f"at most {MAX_IN_VALUES} values in IN")
                values.append(self._operand())
            self._op(")")
            return InList(field=field, values=tuple(values), negated=negated)
        if token.kind != "OP" or token.text not in _COMPARISONS:
            raise self._fail(token, "a comparison (=, !=, <, <=, >, >=) or IN")
        self._next()
        return Compare(field=field, op=cast(Comparison, token.text), value=self._operand())

    def _operand(self) -> Operand:
        token = self._next()
        if token.kind == "PARAM":
            return Param(name=str(token.value), pos=token.pos)
        if token.kind in ("STRING", "NUMBER", "DURATION"):
            return Literal_(value=cast("str | int | float | timedelta", token.value), pos=token.pos)
        if token.kind == "KEYWORD" and token.text in ("TRUE", "FALSE"):
            return Literal_(value=token.text == "TRUE", pos=token.pos)
        raise self._fail(
            token, "a value: 'text', a number, true/false, a duration like 5m, or :param"
        )
