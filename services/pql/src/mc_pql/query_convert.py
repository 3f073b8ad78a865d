"""Proto <-> domain conversion for `mc.pql.v1.QueryService`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from google.protobuf import struct_pb2

from mc.pql.v1 import query_service_pb2 as q
from mc_common.errors import InvalidArgument
from mc_pql.query.engine import Explanation, QueryResult
from mc_pql.query.parser import GRAMMAR_VERSION
from mc_pql.query.planner import ParamValue
from mc_pql.query.saved import SavedQuery
from mc_pql.query.search import Hit


def params_from_proto(values: Mapping[str, struct_pb2.Value]) -> dict[str, ParamValue]:
    """Query parameters from `google.protobuf.Value`s: strings, numbers, booleans or null."""
    params: dict[str, ParamValue] = {}
    for name, value in values.items():
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            params[name] = value.string_value
        elif kind == "number_value":
            number = value.number_value
            if not math.isfinite(number):
                raise InvalidArgument.field(f"params.{name}", "must be a finite number")
            params[name] = int(number) if number.is_integer() and abs(number) < 2**53 else number
        elif kind == "bool_value":
            params[name] = value.bool_value
        elif kind == "null_value" or kind is None:
            params[name] = None
        else:
            raise InvalidArgument.field(f"params.{name}", "must be a string, number or boolean")
    return params


def result_to_proto(result: QueryResult) -> q.QueryResult:
    """The reply message; its rows are encoded once per result and reused for cache hits
    (encoding 10,000 rows x 16 columns costs far more than serving them from the cache)."""
    encoded = result.memo.get("proto")
    if encoded is None:
        encoded = q.QueryResult(
            columns=[q.Column(name=c.name, type=c.type) for c in result.columns],
            truncated=result.truncated,
            total_estimate=max(result.total_estimate, 0),
            estimated_cost=result.estimate.cost,
            guardrails=list(result.guardrails),
            grammar_version=GRAMMAR_VERSION,
        )
        encoded.rows.extend(q.Row(cells=[_cell(v) for v in row]) for row in result.rows)
        result.memo["proto"] = encoded
    message = q.QueryResult()
    message.CopyFrom(encoded)
    message.cached = result.cached
    return message


def _cell(value: object) -> q.Cell:
    cell = q.Cell()
    if value is None:
        return cell
    if isinstance(value, bool):
        cell.bool_value = value
    elif isinstance(value, int):
        cell.int_value = value
    elif isinstance(value, float):
        cell.double_value = value
    elif isinstance(value, datetime):
        cell.time_value.FromDatetime(value.astimezone(UTC) if value.tzinfo else value)
    elif isinstance(value, timedelta):
        cell.duration_value.FromTimedelta(value)
    else:
        cell.string_value = str(value)
    return cell


def explanation_to_proto(explanation: Explanation) -> q.ExplainQueryResponse:
    return q.ExplainQueryResponse(
        sql=explanation.sql,
        params=explanation.params,
        plan_json=json.dumps(explanation.estimate.plan, sort_keys=True),
        estimated_cost=explanation.estimate.cost,
        estimated_rows=max(explanation.estimate.rows, 0),
        heaviest_step=explanation.estimate.heaviest,
        guardrails=list(explanation.guardrails),
        accepted=explanation.accepted,
        rejection=explanation.rejection,
        estimate_ms=explanation.estimate.ms,
        grammar_version=explanation.grammar_version,
    )


def saved_to_proto(saved: SavedQuery) -> q.SavedQuery:
    message = q.SavedQuery(
        name=saved.name,
        query=saved.query,
        description=saved.description,
        parameters=list(saved.parameters),
        signer_key_id=saved.signer_key_id,
        envelope=saved.envelope,
        verified=saved.verified,
    )
    message.saved_at.FromDatetime(saved.saved_at)
    return message


def hit_to_proto(hit: Hit) -> q.SearchHit:
    message = q.SearchHit(kind=hit.kind, id=hit.ref, title=hit.title)
    message.at.FromDatetime(hit.at)
    return message


def optional_time(message: q.SearchProvenanceRequest, field: str) -> datetime | None:
    """A request timestamp as an aware datetime, or None when unset; out of range is
    INVALID_ARGUMENT."""
    if not message.HasField(field):  # type: ignore[arg-type]
        return None
    stamp = getattr(message, field)
    try:
        return stamp.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]
    except (ValueError, OverflowError):
        raise InvalidArgument.field(field, "is not a valid timestamp (years 1 to 9999)") from None
