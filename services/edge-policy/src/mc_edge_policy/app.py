"""Wiring of the edge policy service: key ring, PDP (bootstrapped), decision log, gRPC spec."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import grpc

from mc.policy.v1 import policy_service_pb2_grpc as svc_grpc
from mc_common.events.publisher import EventPublisher
from mc_common.identity import WorkloadIdentity
from mc_common.server import ServiceSpec
from mc_edge_policy.decision_log import DecisionSink, DiscardDecisions, KafkaDecisionLog
from mc_edge_policy.distribution import BundleDistributor, MultiOriginClient, PollOutcome
from mc_edge_policy.edge_policy import EdgePolicy
from mc_edge_policy.history import PqlDecisionHistory
from mc_edge_policy.keys import load_keyring
from mc_edge_policy.limits import LimiterUsage
from mc_edge_policy.metrics import pdp_registry
from mc_edge_policy.pdp import BundleRejected, PolicyDecisionPoint
from mc_edge_policy.servicer import SERVICE_NAME, PolicyServicer
from mc_edge_policy.settings import EdgePolicySettings

log = logging.getLogger("mc.edge_policy")


@dataclass
class EdgePolicyApp:
    """A started edge policy service minus its gRPC server (see `spec()`)."""

    settings: EdgePolicySettings
    pdp: PolicyDecisionPoint
    policy: EdgePolicy
    decision_log: KafkaDecisionLog | None = None
    distributor: BundleDistributor | None = None
    poll_task: asyncio.Task[None] | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    limiter_channel: grpc.aio.Channel | None = None
    pql_channel: grpc.aio.Channel | None = None

    @classmethod
    async def create(cls, settings: EdgePolicySettings) -> EdgePolicyApp:
        """Load keys, bootstrap the PDP from its cache (and the configured bundle), start the
        decision log. A PDP without a bundle still starts: it denies until one arrives."""
        pdp = PolicyDecisionPoint(load_keyring(settings.trusted_keys_file), settings.cache_dir)
        pdp.bootstrap()
        if settings.bundle_file is not None:
            try:
                pdp.activate(settings.bundle_file.read_bytes())
            except BundleRejected as exc:
                log.error("configured bundle refused", extra={"reason": str(exc)})
        decision_log: KafkaDecisionLog | None = None
        sink: DecisionSink = DiscardDecisions()
        if settings.kafka_bootstrap:
            decision_log = KafkaDecisionLog(
                EventPublisher(
                    settings.kafka_bootstrap,
                    source="mc-edge-policy",
                    write_format=settings.events_write_format,
                    security=settings.kafka_security(),
                ),
                settings.decisions_topic,
                max_pending=settings.decision_log_max_pending,
                enqueue_timeout_s=settings.decision_log_enqueue_timeout_s,
            )
            await decision_log.start()
            sink = decision_log
        limiter_channel = limits = None
        if settings.limiter_address:
            # mTLS with this workload's SVID; the limiter must hold `limiter_server`'s name,
            # and must list this workload in its MC_IDENTITY_TENANT_CALLERS (ADR 0040).
            identity = WorkloadIdentity.from_settings(settings.identity)
            limiter_channel = identity.channel(
                settings.limiter_address, server=settings.limiter_server
            )
            limits = LimiterUsage(
                limiter_channel,
                ttl_s=settings.limits_cache_ttl_s,
                timeout_s=settings.limits_timeout_s,
            )
        pql_channel = history = None
        if settings.pql_address:
            pql_channel = WorkloadIdentity.from_settings(settings.identity).channel(
                settings.pql_address, server=settings.pql_server
            )
            history = PqlDecisionHistory(pql_channel)
        app = cls(settings, pdp, EdgePolicy(pdp, sink, limits, history), decision_log)
        app.limiter_channel = limiter_channel
        app.pql_channel = pql_channel
        if settings.origins and settings.tuf_root_file is not None:
            client = MultiOriginClient(
                settings.origins,
                settings.cache_dir / "tuf",
                settings.tuf_root_file.read_bytes(),
                settings.target_name,
                timeout_s=settings.origin_timeout_s,
            )
            app.distributor = BundleDistributor(client, pdp)
            app.poll_task = asyncio.create_task(app._poll_forever(), name="edge-policy-poll")
        return app

    async def _poll_forever(self) -> None:
        """Poll the origins in a worker thread (TUF and compiling block), every interval."""
        assert self.distributor is not None
        while not self.stopping.is_set():
            result = await asyncio.to_thread(self.distributor.poll)
            level = (
                logging.INFO if result.outcome is not PollOutcome.UNREACHABLE else logging.WARNING
            )
            log.log(level, "poll", extra={"outcome": result.outcome, "detail": result.detail[:300]})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.settings.poll_interval_s)

    def spec(self) -> ServiceSpec:
        servicer = PolicyServicer(self.policy)

        def register(server: grpc.aio.Server) -> None:
            svc_grpc.add_PolicyServiceServicer_to_server(servicer, server)

        return ServiceSpec(
            name="mc-edge-policy",
            service_names=[SERVICE_NAME],
            register=register,
            registry=pdp_registry(self.pdp),
        )

    async def close(self) -> None:
        self.stopping.set()
        if self.poll_task is not None:
            await self.poll_task
        if self.decision_log is not None:
            await self.decision_log.stop()
        for channel in (self.limiter_channel, self.pql_channel):
            if channel is not None:
                await channel.close(None)
