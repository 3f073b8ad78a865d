"""Wiring of the provenance service: pool, migrations, signer, domain, consumer, gRPC spec."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

import grpc
from prometheus_client import CollectorRegistry

from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc.pql.v1 import query_service_pb2_grpc as query_grpc
from mc_common.db import Pool, create_pool, migrate
from mc_common.events.consumer import EventConsumer
from mc_common.events.idempotency import ProcessedEvents
from mc_common.server import ServiceSpec
from mc_common.signing import KeyRing, PemSigner, PublicKey
from mc_pql.decisions import DecisionEventHandler
from mc_pql.provenance import Provenance
from mc_pql.query.engine import QueryEngine, QueryLimits
from mc_pql.query.saved import SavedQueries
from mc_pql.query.search import ProvenanceSearch
from mc_pql.query_servicer import QUERY_SERVICE_NAME, QueryServicer
from mc_pql.servicer import SERVICE_NAME, ProvenanceServicer
from mc_pql.settings import PqlSettings
from mc_pql.store import ProvenanceStore

MIGRATIONS = "mc_pql.migrations"
log = logging.getLogger(__name__)


@dataclass
class PqlApp:
    """A started provenance service minus its gRPC server (see `spec()`)."""

    settings: PqlSettings
    pool: Pool
    store: ProvenanceStore
    provenance: Provenance
    queries: QueryServicer
    registry: CollectorRegistry
    consumer: EventConsumer | None = None
    consumer_task: asyncio.Task[None] | None = None
    purge_task: asyncio.Task[None] | None = None

    @classmethod
    async def create(cls, settings: PqlSettings) -> PqlApp:
        """Open the pool, apply migrations, load keys, and start the decisions consumer."""
        signer = PemSigner.from_file(settings.signing_key_path, settings.signing_key_password)
        trusted = [PublicKey.from_file(p) for p in settings.trusted_key_paths]
        pool = await create_pool(
            settings.postgres_dsn,
            settings.pool_min_size,
            settings.pool_max_size,
            schema=settings.db_schema,
            name="mc-pql",
        )
        try:
            processed = await _prepare(pool, settings)
        except BaseException:
            await pool.close()
            raise
        store = ProvenanceStore(pool)
        provenance = Provenance(
            store,
            signer,
            trusted,
            max_batch=settings.max_batch_receipts,
            page_tokens=settings.page_tokens(),
        )
        registry = CollectorRegistry()
        queries = _query_servicer(settings, pool, signer, trusted, registry)
        app = cls(settings, pool, store, provenance, queries, registry)
        if settings.kafka_bootstrap:
            app.consumer = EventConsumer(
                settings.kafka_bootstrap,
                settings.decisions_topic,
                group_id=settings.consumer_group,
                handler=DecisionEventHandler(store, processed),
                max_attempts=settings.consumer_max_attempts,
            )
            app.consumer_task = asyncio.create_task(app.consumer.run(), name="pql-decisions")
            app.purge_task = asyncio.create_task(
                purge_processed_events(processed, settings), name="pql-purge-processed-events"
            )
        return app

    def spec(self) -> ServiceSpec:
        servicer = ProvenanceServicer(self.provenance)

        def register(server: grpc.aio.Server) -> None:
            svc_grpc.add_ProvenanceServiceServicer_to_server(servicer, server)
            query_grpc.add_QueryServiceServicer_to_server(self.queries, server)

        return ServiceSpec(
            name="mc-pql",
            service_names=[SERVICE_NAME, QUERY_SERVICE_NAME],
            register=register,
            registry=self.registry,
        )

    async def close(self) -> None:
        if self.purge_task is not None:
            self.purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.purge_task
        if self.consumer is not None:
            await self.consumer.stop()
        if self.consumer_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.consumer_task
        await self.pool.close()


def _query_servicer(
    settings: PqlSettings,
    pool: Pool,
    signer: PemSigner,
    trusted: list[PublicKey],
    registry: CollectorRegistry,
) -> QueryServicer:
    """PQL: the query engine, provenance search and signed saved queries (docs/pql.md)."""
    limits = QueryLimits(
        row_cap=settings.query_row_cap,
        max_cost=settings.query_max_cost,
        statement_timeout_ms=settings.query_timeout_ms,
        cache_entries=settings.query_cache_entries,
        cache_ttl_s=settings.query_cache_ttl_s,
    )
    engine = QueryEngine(pool, limits, registry=registry)
    keys = KeyRing([signer.public_key, *trusted])
    return QueryServicer(
        engine,
        ProvenanceSearch(pool, settings.page_tokens()),
        SavedQueries(pool, engine, signer, keys),
    )


async def prepare_database(settings: PqlSettings) -> None:
    """What `PqlApp.create` does to the database first, done once by a supervisor before its
    workers start: concurrent `CREATE TABLE IF NOT EXISTS` can fail, so they must not race."""
    pool = await create_pool(
        settings.postgres_dsn, 1, 1, schema=settings.db_schema, name="mc-pql-setup"
    )
    try:
        await _prepare(pool, settings)
    finally:
        await pool.close()


async def _prepare(pool: Pool, settings: PqlSettings) -> ProcessedEvents:
    """Apply the migrations (they create the decisions consumer's table too)."""
    await migrate(pool, MIGRATIONS, schema=settings.db_schema)
    return ProcessedEvents(pool, settings.consumer_group)


async def purge_processed_events(processed: ProcessedEvents, settings: PqlSettings) -> None:
    """Forget processed event ids older than the retention, every `purge_interval_s`."""
    while True:
        await asyncio.sleep(settings.processed_events_purge_interval_s)
        try:
            await processed.purge_older_than(
                timedelta(seconds=settings.processed_events_retention_s)
            )
        except Exception:  # logged; the next round tries again
            log.exception("purging processed events failed")
