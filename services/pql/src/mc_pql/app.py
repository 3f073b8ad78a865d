"""Wiring of the provenance service: pool, migrations, signer, domain, consumer, gRPC spec."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry
from psycopg import sql

from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc.pql.v1 import query_service_pb2_grpc as query_grpc
from mc.pql.v1 import receipt_log_service_pb2_grpc as log_grpc
from mc_common.db import Pool, create_pool, migrate
from mc_common.events.consumer import EventConsumer
from mc_common.events.idempotency import ProcessedEvents
from mc_common.events.publisher import EventPublisher, OutgoingEvent
from mc_common.periodic import Periodic
from mc_common.receipts.note import NoteSigner
from mc_common.server import ServiceSpec
from mc_common.signing import KeyRing, PemSigner, PublicKey
from mc_pql import log_convert
from mc_pql.checkpoints import CHECKPOINT_EVENT_TYPE, CheckpointIssuer, Publish
from mc_pql.decisions import DecisionEventHandler
from mc_pql.log import CheckpointSigner, ReceiptLog
from mc_pql.log_servicer import LOG_SERVICE_NAME, ReceiptLogServicer
from mc_pql.log_store import LogStore, StoredCheckpoint
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
    receipt_log: ReceiptLog
    checkpoints: CheckpointIssuer
    current_key: PublicKey
    trusted_keys: list[PublicKey]
    consumer: EventConsumer | None = None
    consumer_task: asyncio.Task[None] | None = None
    purge: Periodic | None = None
    publisher: EventPublisher | None = None

    @classmethod
    async def create(cls, settings: PqlSettings) -> PqlApp:
        """Open the pool, apply migrations, load keys, and start the decisions consumer and
        the checkpoint issuer."""
        signer = PemSigner.from_file(settings.signing_key_path, settings.signing_key_password)
        trusted = [PublicKey.from_file(p) for p in settings.trusted_key_paths]
        checkpoint_signer = CheckpointSigner(_checkpoint_key(settings))
        if settings.migration_dsn is not None:
            await prepare_database(settings)
        pool = await create_pool(
            settings.postgres_dsn,
            settings.pool_min_size,
            settings.pool_max_size,
            schema=settings.db_schema,
            name="mc-pql",
        )
        try:
            if settings.migration_dsn is None:
                await _prepare(pool, settings)
            processed = ProcessedEvents(pool, settings.consumer_group)
        except BaseException:
            await pool.close()
            raise
        store = ProvenanceStore(pool)
        log_store = LogStore(pool)
        publisher = None
        if settings.kafka_bootstrap:
            publisher = EventPublisher(
                settings.kafka_bootstrap,
                source="mc-pql",
                write_format=settings.events_write_format,
                security=settings.kafka_security(),
            )
            try:
                await publisher.start()
            except BaseException:
                await pool.close()
                raise
        issuer = CheckpointIssuer(
            checkpoint_signer,
            log_store,
            interval_s=settings.checkpoint_interval_s,
            publish=None
            if publisher is None
            else _publisher(publisher, settings, checkpoint_signer),
        )
        provenance = Provenance(
            store,
            signer,
            trusted,
            max_batch=settings.max_batch_receipts,
            page_tokens=settings.page_tokens(),
            on_appended=issuer.observe,
        )
        registry = CollectorRegistry()
        queries = _query_servicer(settings, pool, signer, trusted, registry)
        receipt_log = ReceiptLog(log_store, checkpoint_signer, provenance)
        current = PublicKey.from_pem(signer.public_key_pem())
        app = cls(
            settings,
            pool,
            store,
            provenance,
            queries,
            registry,
            receipt_log,
            issuer,
            current,
            trusted,
            publisher=publisher,
        )
        if settings.checkpoints_enabled:
            issuer.start()
        if settings.kafka_bootstrap:
            app.consumer = EventConsumer(
                settings.kafka_bootstrap,
                settings.decisions_topic,
                group_id=settings.consumer_group,
                timings=settings.group_timings(),
                handler=DecisionEventHandler(store, processed),
                max_attempts=settings.consumer_max_attempts,
                security=settings.kafka_security(),
            )
            app.consumer_task = asyncio.create_task(app.consumer.run(), name="pql-decisions")
            app.purge = Periodic(
                "pql-purge-processed-events",
                settings.processed_events_purge_interval_s,
                functools.partial(purge_processed_events, processed, settings),
            )
            app.purge.start()
        return app

    def spec(self) -> ServiceSpec:
        servicer = ProvenanceServicer(self.provenance)
        log_servicer = ReceiptLogServicer(
            self.receipt_log, self.current_key, self.trusted_keys, self.settings.key_validity
        )

        def register(server: grpc.aio.Server) -> None:
            svc_grpc.add_ProvenanceServiceServicer_to_server(servicer, server)
            query_grpc.add_QueryServiceServicer_to_server(self.queries, server)
            log_grpc.add_ReceiptLogServiceServicer_to_server(log_servicer, server)

        return ServiceSpec(
            name="mc-pql",
            service_names=[SERVICE_NAME, QUERY_SERVICE_NAME, LOG_SERVICE_NAME],
            register=register,
            registry=self.registry,
        )

    async def close(self) -> None:
        if self.purge is not None:
            await self.purge.stop()
        if self.consumer is not None:
            await self.consumer.stop()
        if self.consumer_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.consumer_task
        try:
            await self.checkpoints.stop()
        except Exception:
            log.exception("last checkpoints were not issued")
        if self.publisher is not None:
            await self.publisher.stop()
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


def _checkpoint_key(settings: PqlSettings) -> NoteSigner:
    name = settings.checkpoint_key_name
    if settings.checkpoint_key_path is None:
        log.warning("no MC_PQL_CHECKPOINT_KEY_PATH: checkpoints are signed with a key of this run")
        return NoteSigner(name, Ed25519PrivateKey.generate())
    return NoteSigner.from_pem(name, settings.checkpoint_key_path.read_bytes())


def _publisher(
    publisher: EventPublisher, settings: PqlSettings, signer: CheckpointSigner
) -> Publish:
    async def publish(checkpoints: Sequence[StoredCheckpoint]) -> None:
        await publisher.publish_batch(
            settings.checkpoints_topic,
            [
                OutgoingEvent(
                    tenant=c.tenant,
                    event_type=CHECKPOINT_EVENT_TYPE,
                    message=log_convert.checkpoint(c, signer.origin(c.tenant)),
                    event_id=f"{c.tenant}/{c.size}/{c.root.hex()}",
                )
                for c in checkpoints
            ],
        )

    return publish


async def prepare_database(settings: PqlSettings) -> None:
    """What `PqlApp.create` does to the database first, as the schema owner
    (`migration_dsn`, else `postgres_dsn`), done once by a supervisor before its workers
    start: concurrent `CREATE TABLE IF NOT EXISTS` can fail, so they must not race."""
    pool = await create_pool(
        settings.migration_dsn or settings.postgres_dsn,
        1,
        1,
        schema=settings.db_schema,
        name="mc-pql-setup",
    )
    try:
        await _prepare(pool, settings)
    finally:
        await pool.close()


async def _prepare(pool: Pool, settings: PqlSettings) -> None:
    """Apply the migrations (they create the decisions consumer's table too), and grant the
    runtime role what it needs and nothing more (ADR 0026)."""
    await migrate(pool, MIGRATIONS, schema=settings.db_schema)
    if settings.runtime_role is not None:
        await grant_runtime_role(pool, settings.db_schema, settings.runtime_role)


# What the runtime role may do beyond SELECT and INSERT: none of it touches evidence (receipts,
# the receipt log, checkpoints, executions, decisions), which stay insert-only.
_RUNTIME_EXTRAS = (
    "GRANT DELETE ON {schema}.processed_events TO {role}",  # a purged deduplication cache
    "GRANT UPDATE ON {schema}.query_tenant_versions TO {role}",  # query cache version counter
    "GRANT UPDATE ON {schema}.saved_queries TO {role}",  # a tenant's saved queries, replaced
    # Revocation only: a trigger (0005_receipt_log.sql) refuses any other change of a key row.
    "GRANT UPDATE (revoked_at) ON {schema}.signing_keys TO {role}",
)


async def grant_runtime_role(pool: Pool, schema: str, role: str) -> None:
    """USAGE on the schema, SELECT and INSERT on its tables, EXECUTE on its functions, and the
    few `_RUNTIME_EXTRAS`; the role owns nothing, so it cannot alter tables, disable triggers,
    or update, delete or truncate evidence (ADR 0026)."""
    schema_id, role_id = sql.Identifier(schema), sql.Identifier(role)
    async with pool.connection() as conn:
        for statement in (
            "REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}",
            "GRANT USAGE ON SCHEMA {schema} TO {role}",
            "GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA {schema} TO {role}",
            "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
            "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {role}",
            *_RUNTIME_EXTRAS,
        ):
            await conn.execute(sql.SQL(statement).format(schema=schema_id, role=role_id))


async def purge_processed_events(processed: ProcessedEvents, settings: PqlSettings) -> None:
    """Forget processed event ids older than the retention (run every `purge_interval_s`)."""
    await processed.purge_older_than(timedelta(seconds=settings.processed_events_retention_s))
