"""The `mc.pql.v1.QueryService` servicer: decode request, call the query domain, encode reply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from mc.pql.v1 import query_service_pb2 as q
from mc.pql.v1 import query_service_pb2_grpc as q_grpc
from mc_common.tenancy import require_tenant
from mc_pql import query_convert as convert
from mc_pql.query.engine import QueryEngine
from mc_pql.query.saved import SavedQueries
from mc_pql.query.search import ProvenanceSearch

QUERY_SERVICE_NAME = q.DESCRIPTOR.services_by_name["QueryService"].full_name

Ctx = Any  # grpc.aio.ServicerContext; the interceptors own status handling


class QueryServicer(q_grpc.QueryServiceServicer):
    """Thin adapter over `QueryEngine`, `ProvenanceSearch` and `SavedQueries`."""

    def __init__(self, engine: QueryEngine, search: ProvenanceSearch, saved: SavedQueries) -> None:
        self._engine = engine
        self._search = search
        self._saved = saved

    async def Query(self, request: q.QueryRequest, context: Ctx) -> q.QueryResponse:
        result = await self._engine.run(
            require_tenant(), request.query, convert.params_from_proto(request.params)
        )
        return q.QueryResponse(result=convert.result_to_proto(result))

    async def ExplainQuery(
        self, request: q.ExplainQueryRequest, context: Ctx
    ) -> q.ExplainQueryResponse:
        explanation = await self._engine.explain(
            require_tenant(), request.query, convert.params_from_proto(request.params)
        )
        return convert.explanation_to_proto(explanation)

    async def ExportQuery(
        self, request: q.ExportQueryRequest, context: Ctx
    ) -> AsyncIterator[q.ExportQueryResponse]:
        stream = self._engine.export_csv(
            require_tenant(), request.query, convert.params_from_proto(request.params)
        )
        async for item in stream:
            if isinstance(item, bytes):
                yield q.ExportQueryResponse(csv_chunk=item)
                continue
            context.set_trailing_metadata(
                (
                    ("x-mc-truncated", "true" if item.truncated else "false"),
                    ("x-mc-total-estimate", str(item.total_estimate)),
                )
            )
            yield q.ExportQueryResponse(
                done=True, truncated=item.truncated, total_estimate=item.total_estimate
            )

    async def SearchProvenance(
        self, request: q.SearchProvenanceRequest, context: Ctx
    ) -> q.SearchProvenanceResponse:
        hits, token = await self._search.search(
            require_tenant(),
            request.q,
            kinds=list(request.kinds),
            since=convert.optional_time(request, "since"),
            until=convert.optional_time(request, "until"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return q.SearchProvenanceResponse(
            hits=[convert.hit_to_proto(h) for h in hits], next_page_token=token
        )

    async def SaveQuery(self, request: q.SaveQueryRequest, context: Ctx) -> q.SaveQueryResponse:
        saved = await self._saved.save(
            require_tenant(), request.name, request.query, request.description
        )
        return q.SaveQueryResponse(saved_query=convert.saved_to_proto(saved))

    async def ListSavedQueries(
        self, request: q.ListSavedQueriesRequest, context: Ctx
    ) -> q.ListSavedQueriesResponse:
        saved = await self._saved.list(require_tenant())
        return q.ListSavedQueriesResponse(saved_queries=[convert.saved_to_proto(s) for s in saved])

    async def RunSavedQuery(
        self, request: q.RunSavedQueryRequest, context: Ctx
    ) -> q.RunSavedQueryResponse:
        result = await self._saved.run(
            require_tenant(), request.name, convert.params_from_proto(request.params)
        )
        return q.RunSavedQueryResponse(result=convert.result_to_proto(result))
