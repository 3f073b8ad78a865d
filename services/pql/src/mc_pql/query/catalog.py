"""What PQL can read: its subjects, their fields, and the SQL each field stands for.

This is the whole surface of the language over the database. Identifiers in generated SQL come
only from here; values always travel as parameters. No subject exposes a tenant field: the
planner adds the caller's tenant to every table reference itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final, Literal

FieldType = Literal["str", "int", "float", "bool", "time", "duration"]


@dataclass(frozen=True, slots=True)
class Field:
    """One queryable field. `sql` is a template over the subject's alias (`{a}`).

    `member` fields hold a list (for example a receipt's decision rules): `=` means "has this
    value", `IN` "has any of these"; they cannot be ordered, grouped or aggregated. Their `sql`
    is the term kind in the subject's `keys` column (`<tenant>|<kind>:<value>`, GIN-indexed).
    """

    name: str
    type: FieldType
    sql: str
    doc: str
    member: bool = False
    indexed: bool = False


@dataclass(frozen=True, slots=True)
class Subject:
    """A queryable subject: one table scoped by tenant, with a time field for windows."""

    name: str
    table: str
    alias: str
    time_field: str
    fields: dict[str, Field] = field(default_factory=dict)
    row_fields: tuple[str, ...] = ()
    labels: bool = False
    doc: str = ""

    def lookup(self, name: str) -> Field | None:
        if self.labels and name.startswith("label.") and len(name) > len("label."):
            return Field(name, "str", "", "an execution label", indexed=False)
        return self.fields.get(name)


def _subject(
    name: str,
    table: str,
    alias: str,
    time_field: str,
    fields: list[Field],
    *,
    labels: bool = False,
    doc: str,
) -> Subject:
    by_name = {f.name: f for f in fields}
    rows = tuple(f.name for f in fields if not f.member)
    return Subject(name, table, alias, time_field, by_name, rows, labels, doc)


SUBJECTS: Final[dict[str, Subject]] = {
    "executions": _subject(
        "executions",
        "executions",
        "e",
        "recorded_at",
        [
            Field(
                "execution_id", "str", "{a}.execution_id", "the orchestrator's run id", indexed=True
            ),
            Field("package", "str", "{a}.package_name", "package name", indexed=True),
            Field("version", "str", "{a}.package_version", "package version"),
            Field("package_digest", "str", "{a}.package_digest", "package sha256", indexed=True),
            Field("region", "str", "{a}.region", "where it ran"),
            Field("status", "str", "{a}.status", "orchestrator status"),
            Field("started_at", "time", "{a}.started_at", "start time"),
            Field("finished_at", "time", "{a}.finished_at", "finish time"),
            Field("recorded_at", "time", "{a}.recorded_at", "when MC recorded it", indexed=True),
            Field("duration", "duration", "({a}.finished_at - {a}.started_at)", "run time"),
            Field(
                "deny",
                "bool",
                "EXISTS (SELECT 1 FROM policy_decisions x WHERE x.tenant = {a}.tenant"
                " AND x.execution_id = {a}.execution_id AND NOT x.allow)",
                "true when a policy decision denied it",
            ),
        ],
        labels=True,
        doc="executions reported by the orchestrator (labels as label.<key>)",
    ),
    "receipts": _subject(
        "receipts",
        "receipt_facts",
        "r",
        "recorded_at",
        [
            Field("digest", "str", "{a}.digest", "receipt digest (its id)", indexed=True),
            Field("sequence", "int", "{a}.sequence", "position in the tenant's log"),
            Field("execution_id", "str", "{a}.execution_id", "the execution", indexed=True),
            Field("package", "str", "{a}.package_name", "package name", indexed=True),
            Field("version", "str", "{a}.package_version", "package version"),
            Field("package_digest", "str", "{a}.package_digest", "package sha256", indexed=True),
            Field("region", "str", "{a}.region", "where it ran"),
            Field("cost", "int", "{a}.cost_micros", "cost in micro-units of currency"),
            Field("currency", "str", "{a}.currency", "ISO 4217 currency of cost"),
            Field("steps", "int", "{a}.steps", "number of steps"),
            Field("failed_steps", "int", "{a}.failed_steps", "steps that failed"),
            Field("started_at", "time", "{a}.started_at", "execution start"),
            Field("finished_at", "time", "{a}.finished_at", "execution finish"),
            Field("recorded_at", "time", "{a}.recorded_at", "when MC recorded it", indexed=True),
            Field("duration", "duration", "({a}.finished_at - {a}.started_at)", "run time"),
            Field("denied", "bool", "{a}.denied", "true when any decision in it denied"),
            Field("decision", "str", "d", "rules of its decisions", member=True, indexed=True),
            Field("step", "str", "s", "names of its steps", member=True, indexed=True),
            Field(
                "subject_digest", "str", "h", "sha256 of its subjects", member=True, indexed=True
            ),
        ],
        doc="signed execution receipts (facts projected from the signed statement)",
    ),
    "decisions": _subject(
        "decisions",
        "policy_decisions",
        "d",
        "decided_at",
        [
            Field("decision_id", "str", "{a}.decision_id", "decision id", indexed=True),
            Field("execution_id", "str", "{a}.execution_id", "gated execution", indexed=True),
            Field("policy", "str", "{a}.policy", "policy bundle@version"),
            Field("rule", "str", "{a}.rule", "deciding rule"),
            Field("allow", "bool", "{a}.allow", "outcome"),
            Field("deny", "bool", "(NOT {a}.allow)", "negated outcome"),
            Field("reason", "str", "{a}.reason", "reason given"),
            Field("bundle_digest", "str", "{a}.bundle_digest", "bundle that decided"),
            Field("decided_at", "time", "{a}.decided_at", "when it was decided", indexed=True),
            Field("recorded_at", "time", "{a}.recorded_at", "when MC recorded it"),
        ],
        doc="policy decisions (from the PDP's events or RecordDecision)",
    ),
}

JOINABLE: Final = frozenset({("receipts", "decisions"), ("decisions", "receipts")})
"""The only join: receipts <-> decisions on execution_id (seed 001, SAFETY.md)."""
JOIN_KEY: Final = "execution_id"

BUCKET_WIDTHS: Final = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(hours=1),
    timedelta(days=1),
)
