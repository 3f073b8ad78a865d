"""Typed settings of the edge policy service, read from `MC_EDGE_POLICY_*` variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from mc_common.config import KafkaSettings


class EdgePolicySettings(KafkaSettings):
    """Everything the edge policy service (the PDP) reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="MC_EDGE_POLICY_", extra="ignore", frozen=True)

    cache_dir: Path = Field(
        Path("/var/lib/mc-edge-policy"),
        description="Where the last good bundle, its state and quarantined bundles are kept.",
    )
    trusted_keys_file: Path | None = Field(
        None,
        description="JSON list of bundle verification keys: {kid, algorithm, pem, not_before?, "
        "not_after?}; two entries overlap during a signing key rotation.",
    )
    bundle_file: Path | None = Field(
        None, description="A signed bundle to activate at start (else the cache is used)."
    )
    kafka_bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers; unset means decisions are not published."
    )
    decisions_topic: str = Field("mc.policy.decisions", description="Decisions topic.")
    limiter_address: str | None = Field(
        None,
        description="host:port of the limiter; set, input.limits comes from its GetUsage "
        "(the request's own input.limits is discarded).",
    )
    limits_cache_ttl_s: float = Field(0.5, ge=0, description="How long a usage answer is reused.")
    limits_timeout_s: float = Field(0.25, gt=0, description="GetUsage deadline.")
    limiter_server: str = Field(
        "limiter", description="The workload the limiter must prove it is (mTLS, ADR 0041)."
    )
    pql_address: str | None = Field(
        None, description="host:port of the provenance store, for ExplainExecution."
    )
    pql_server: str = Field(
        "pql", description="The workload the provenance store must prove it is (mTLS)."
    )
    origins: list[str] = Field(
        default_factory=list,
        description="Base URLs of the distribution origins (CDNs) serving the TUF repository; "
        "empty disables polling.",
    )
    tuf_root_file: Path | None = Field(
        None, description="The trusted TUF root metadata (shipped out of band); needed to poll."
    )
    target_name: str = Field("mc.tar.gz", description="The bundle's TUF target name.")
    poll_interval_s: float = Field(30.0, gt=0, description="Seconds between origin polls.")
    origin_timeout_s: float = Field(5.0, gt=0, description="Timeout of one origin request.")
    decision_log_max_pending: int = Field(
        10_000, ge=1, description="Decisions queued for Kafka before new ones wait."
    )
    decision_log_enqueue_timeout_s: float = Field(
        1.0, gt=0, description="How long a decision waits for queue space before UNAVAILABLE."
    )
    workers: int = Field(
        1,
        ge=1,
        description="Server processes sharing grpc_port (SO_REUSEPORT); needs a fixed grpc_port. "
        "Worker i serves metrics on metrics_port + i.",
    )

    @model_validator(mode="after")
    def _workers_share_a_fixed_port(self) -> EdgePolicySettings:
        if self.workers > 1 and self.grpc_port == 0:
            raise ValueError("workers > 1 needs a fixed grpc_port (0 would give each its own)")
        return self
