"""Typed settings of the provenance service, read from `MC_PQL_*` environment variables."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from mc_common.config import KafkaSettings, PostgresSettings
from mc_common.pagetokens import PageTokens


class PqlSettings(PostgresSettings, KafkaSettings):
    """Everything the provenance service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="MC_PQL_", extra="ignore", frozen=True)

    db_schema: str = Field("pql", pattern=r"^[a-z_][a-z0-9_]*$", description="Postgres schema.")
    signing_key_path: Path = Field(
        ..., description="PEM ECDSA P-256 private key the service signs receipts with."
    )
    signing_key_password: str | None = Field(None, description="Password of the signing key.")
    trusted_key_paths: list[Path] = Field(
        default_factory=list,
        description="PEM public keys of earlier service keys, so receipts survive key rotation.",
    )
    page_token_keys: list[SecretStr] = Field(
        default_factory=list,
        description="HMAC keys of page tokens (16+ bytes each): the first signs, all verify, so "
        "rotate by prepending a new key. Unset: derived from the signing key, so replicas that "
        "share it accept each other's tokens.",
    )
    migration_dsn: str | None = Field(
        None,
        description="DSN of the schema owner, used only to apply migrations and grant the "
        "runtime role; unset: migrations run over postgres_dsn (dev and tests only).",
    )
    runtime_role: str | None = Field(
        None,
        pattern=r"^[a-z_][a-z0-9_]*$",
        description="The role postgres_dsn logs in as; after migrating, the owner grants it "
        "USAGE on the schema and SELECT and INSERT on the tables (nothing else).",
    )
    checkpoint_key_path: Path | None = Field(
        None,
        description="PEM Ed25519 private key checkpoints are signed with. Unset: a new key "
        "per start (logged as a warning), so earlier checkpoints stop verifying: dev only.",
    )
    checkpoint_key_name: str = Field(
        "maestro-conductor.dev/pql",
        pattern=r"^[^\s+]+$",
        description="The checkpoint key's name; a tenant's log origin is '<name>/<tenant>'.",
    )
    checkpoint_interval_s: float = Field(
        0.5, gt=0, le=1.0, description="How often active tenants' logs are checkpointed."
    )
    checkpoints_enabled: bool = Field(
        True,
        description="Issue checkpoints periodically; false only for benchmarks (the baseline of "
        "bench/pql_checkpoints.py): on-demand checkpoints are still served.",
    )
    checkpoints_topic: str = Field(
        "mc.receipts.checkpoints", description="Topic checkpoints are published to."
    )
    key_validity: dict[str, tuple[datetime | None, datetime | None]] = Field(
        default_factory=dict,
        description="JSON map of receipt key id -> [not_before, not_after] (RFC 3339 or null), "
        "published with the keys (GetVerificationKeys).",
    )
    decisions_topic: str = Field("mc.policy.decisions", description="Policy decisions topic.")
    consumer_group: str = Field("mc-pql", description="Kafka consumer group of this service.")
    consumer_max_attempts: int = Field(
        3, ge=1, description="Attempts at an event whose failure is permanent before the DLQ."
    )
    processed_events_retention_s: float = Field(
        7 * 86_400.0,
        gt=0,
        description="How long processed event ids are kept for deduplication; keep it above "
        "the topic's retention so no redelivery can be applied twice.",
    )
    processed_events_purge_interval_s: float = Field(
        3600.0, gt=0, description="How often old processed event ids are purged."
    )
    max_batch_receipts: int = Field(
        256, ge=1, description="Most receipts one chain transaction appends (group commit)."
    )
    workers: int = Field(
        1,
        ge=1,
        description="Server processes sharing grpc_port (SO_REUSEPORT), each with its own pool "
        "and chain writer; needs a fixed grpc_port. Worker i serves metrics on metrics_port + i.",
    )

    query_row_cap: int = Field(
        10_000, ge=1, le=100_000, description="PQL: most rows a query returns (then truncated)."
    )
    query_max_cost: float = Field(
        1_000_000.0,
        gt=0,
        description="PQL cost guard: most rows a query may read (estimated from statistics).",
    )
    query_timeout_ms: int = Field(
        5_000, ge=100, le=600_000, description="PQL: statement timeout of one query."
    )
    query_cache_entries: int = Field(1024, ge=0, description="PQL: result cache entries.")
    query_cache_ttl_s: float = Field(300.0, ge=0, description="PQL: result cache TTL, seconds.")

    def page_tokens(self) -> PageTokens:
        """The page token keys: `page_token_keys`, or one derived from the signing key."""
        if self.page_token_keys:
            return PageTokens([k.get_secret_value().encode() for k in self.page_token_keys])
        return PageTokens.derived(self.signing_key_path.read_bytes())

    @model_validator(mode="after")
    def _workers_share_a_fixed_port(self) -> PqlSettings:
        if self.workers > 1 and self.grpc_port == 0:
            raise ValueError("workers > 1 needs a fixed grpc_port (0 would give each its own)")
        return self
