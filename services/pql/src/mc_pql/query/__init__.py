"""PQL, the provenance query language: parser, planner, cost guard, cache and engine.

The pieces are plain Python over Postgres (no gRPC): `parser.parse` turns text into an AST,
`planner.plan` checks it against the `catalog` and the guardrails and compiles it to one
parameterized SQL statement scoped to the caller's tenant, and `engine.QueryEngine` estimates
its cost, runs it read-only under a statement timeout, caches results and streams exports.
See docs/pql.md for the grammar and every guardrail.
"""

from mc_pql.query.errors import PqlSyntaxError, QueryRejected
from mc_pql.query.parser import GRAMMAR_VERSION, parse

__all__ = ["GRAMMAR_VERSION", "PqlSyntaxError", "QueryRejected", "parse"]
