"""The PQL abstract syntax tree: what the parser produces and the planner consumes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, TypeAlias

Comparison = Literal["=", "!=", "<", "<=", ">", ">="]
AggregateName = Literal["COUNT", "SUM", "AVG", "MIN", "MAX"]


@dataclass(frozen=True, slots=True)
class Position:
    """Where a node starts in the query text (1-based line and column)."""

    line: int
    column: int


@dataclass(frozen=True, slots=True)
class FieldRef:
    """`name` or `subject.name`; `label.key` reads one label of an execution."""

    subject: str | None
    name: str
    pos: Position

    def text(self) -> str:
        return f"{self.subject}.{self.name}" if self.subject else self.name


@dataclass(frozen=True, slots=True)
class Literal_:
    """A literal value: str, int, float (decimal), bool or a duration."""

    value: str | int | float | bool | timedelta
    pos: Position


@dataclass(frozen=True, slots=True)
class Param:
    """A named parameter `:name`, bound at run time."""

    name: str
    pos: Position


Operand: TypeAlias = "Literal_ | Param"


@dataclass(frozen=True, slots=True)
class Compare:
    field: FieldRef
    op: Comparison
    value: Operand


@dataclass(frozen=True, slots=True)
class InList:
    field: FieldRef
    values: tuple[Operand, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class And:
    left: Predicate
    right: Predicate


@dataclass(frozen=True, slots=True)
class Or:
    left: Predicate
    right: Predicate


@dataclass(frozen=True, slots=True)
class Not:
    operand: Predicate


Predicate: TypeAlias = "Compare | InList | And | Or | Not"


@dataclass(frozen=True, slots=True)
class Aggregate:
    """`COUNT(*)`, `COUNT(subject)` or `FN(field)`; `field` is None for a count of rows."""

    fn: AggregateName
    field: FieldRef | None
    subject: str | None
    pos: Position

    def text(self) -> str:
        inner = self.field.text() if self.field else (self.subject or "*")
        return f"{self.fn}({inner})"


@dataclass(frozen=True, slots=True)
class Join:
    subject: str
    left: FieldRef
    right: FieldRef
    pos: Position


@dataclass(frozen=True, slots=True)
class Top:
    k: int
    by: FieldRef | Aggregate
    pos: Position


@dataclass(frozen=True, slots=True)
class Query:
    """One PQL query. `aggregates` empty means rows of `subject` are selected."""

    subject: str
    subject_pos: Position
    aggregates: tuple[Aggregate, ...]
    join: Join | None
    where: Predicate | None
    group_by: tuple[FieldRef, ...]
    bucket: timedelta | None
    top: Top | None
    since: timedelta | None
    limit: int | None
