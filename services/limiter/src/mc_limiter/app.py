"""Wiring of the limiter service: Redis shards, the limiter, fair share, sinks, gRPC spec."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import grpc
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from envoy.service.ratelimit.v3 import rls_pb2_grpc
from mc.limiter.v1 import fairshare_service_pb2_grpc as fs_grpc
from mc.limiter.v1 import limiter_service_pb2_grpc as svc_grpc
from mc_common.errors import Unavailable
from mc_common.events.publisher import EventPublisher
from mc_common.server import ServiceSpec
from mc_limiter.audit import AuditSink
from mc_limiter.denials import DenySink
from mc_limiter.envoy_config import load_paths
from mc_limiter.envoy_rls import RLS_SERVICE, InvalidPolicy, RateLimitServicer, RlsOptions
from mc_limiter.fairshare import FairShareDispatcher
from mc_limiter.limiter import Limiter, LimiterOptions, UnmatchedPolicy
from mc_limiter.metrics import LimiterMetrics
from mc_limiter.ratelimit_headers import HeaderStyle
from mc_limiter.regions import RegionPeer
from mc_limiter.servicer import (
    FAIRSHARE_SERVICE,
    LIMITER_SERVICE,
    FairShareServicer,
    LimiterServicer,
)
from mc_limiter.settings import LimiterSettings
from mc_limiter.sharding import Shard, ShardRouter
from mc_limiter.sinks import KafkaAuditSink, KafkaDenySink, LogAuditSink

log = logging.getLogger(__name__)


@dataclass
class LimiterApp:
    """A started limiter service minus its gRPC server (see `spec()`)."""

    settings: LimiterSettings
    limiter: Limiter
    fairshare: FairShareDispatcher
    registry: CollectorRegistry
    publisher: EventPublisher | None = None
    _clients: list[Redis] = field(default_factory=list)

    @classmethod
    async def create(
        cls, settings: LimiterSettings, registry: CollectorRegistry | None = None
    ) -> LimiterApp:
        registry = registry or CollectorRegistry()
        publisher = None
        audit: AuditSink = LogAuditSink()
        denies: DenySink | None = None
        if settings.kafka_bootstrap:
            publisher = EventPublisher(
                settings.kafka_bootstrap,
                source=f"mc-limiter/{settings.region}",
                write_format=settings.events_write_format,
                security=settings.kafka_security(),
            )
            await publisher.start()
            audit = KafkaAuditSink(publisher, settings.audit_topic)
            denies = KafkaDenySink(publisher, settings.decisions_topic, settings.region)
        options = LimiterOptions(
            key_prefix=settings.key_prefix,
            region=settings.region,
            socket_timeout_ms=settings.socket_timeout_ms,
            probe_interval_ms=settings.probe_interval_ms,
            batch_wait_us=settings.batch_wait_us,
            decision_timeout_us=settings.decision_timeout_us,
            region_sync_ms=settings.region_sync_ms,
            fallback_share=settings.fallback_share,
            unmatched=UnmatchedPolicy(settings.unmatched),
            config_snapshot_path=settings.config_snapshot_path,
        )
        peers = [
            RegionPeer(
                peer.name,
                ShardRouter(
                    Shard.from_url(f"{peer.name}-{i}", url, settings.socket_timeout_ms)
                    for i, url in enumerate(peer.redis_urls)
                ),
                peer.key_prefix,
            )
            for peer in settings.peers
        ]
        limiter = Limiter.from_urls(
            settings.shard_urls(),
            config_url=settings.config_redis_url,
            options=options,
            peers=peers,
            metrics=LimiterMetrics(registry),
            audit_sink=audit,
            deny_sink=denies,
            page_tokens=settings.page_tokens(),
        )
        fairshare_client = Redis.from_url(
            settings.config_redis_url or next(iter(settings.shard_urls().values()))
        )
        fairshare = FairShareDispatcher(
            fairshare_client,
            key_prefix=settings.fairshare_key_prefix,
            capacity=settings.fairshare_capacity,
            default_lease_ms=settings.fairshare_lease_ms,
            collect_ms=settings.fairshare_collect_ms,
            call_timeout_ms=settings.fairshare_timeout_ms,
        )
        app = cls(settings, limiter, fairshare, registry, publisher, [fairshare_client])
        try:
            await limiter.start()
            await apply_rule_files(limiter, settings.rule_files)
        except BaseException:
            await app.close()
            raise
        return app

    def spec(self) -> ServiceSpec:
        limiter_servicer = LimiterServicer(self.limiter)
        fairshare_servicer = FairShareServicer(self.fairshare)
        settings = self.settings
        rls_servicer = RateLimitServicer(
            self.limiter,
            RlsOptions(
                tenant_entry=settings.envoy_tenant_entry,
                token_entry=settings.envoy_token_entry,
                invalid=InvalidPolicy(settings.envoy_invalid),
                invalid_by_domain={
                    d: InvalidPolicy(p) for d, p in settings.envoy_invalid_by_domain.items()
                },
                headers=HeaderStyle(settings.envoy_headers),
            ),
        )

        def register(server: grpc.aio.Server) -> None:
            svc_grpc.add_LimiterServiceServicer_to_server(limiter_servicer, server)
            fs_grpc.add_FairShareServiceServicer_to_server(fairshare_servicer, server)
            rls_pb2_grpc.add_RateLimitServiceServicer_to_server(rls_servicer, server)

        return ServiceSpec(
            name="mc-limiter",
            service_names=[LIMITER_SERVICE, FAIRSHARE_SERVICE, RLS_SERVICE],
            register=register,
            # Envoy's rate limit API carries no tenant credential: only the front door's
            # SPIFFE IDs (MC_IDENTITY_FRONT_DOOR) may ask it (ADR 0040).
            front_door_methods=[f"/{RLS_SERVICE}/ShouldRateLimit"],
            registry=self.registry,
        )

    async def close(self) -> None:
        await self.limiter.close()
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.aclose()
        if self.publisher is not None:
            await self.publisher.stop()


async def apply_rule_files(limiter: Limiter, paths: list[str]) -> None:
    """Store each declarative rules file whose domain differs from what is stored (every
    replica does this at start; unchanged files write nothing). An invalid file fails the
    start; an unreachable config store does not (the replica serves its last good
    configuration, and the files are applied by the next replica that starts)."""
    for config in load_paths(paths):
        where = {"file": config.file_name, "domain": config.domain}
        try:
            plan = await limiter.put_domain(
                config.source, file_name=config.file_name, actor="config:rule-files", dry_run=True
            )
            if plan.changes or plan.revision == 0:
                await limiter.put_domain(
                    config.source, file_name=config.file_name, actor="config:rule-files"
                )
                log.info("applied rules file", extra=where)
        except Unavailable:
            log.error("rules file not applied: the config store is unreachable", extra=where)
