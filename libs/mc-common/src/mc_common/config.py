"""Typed settings from the environment: one settings class per service, sharing these fields.

`ServiceSettings` has what every service has; `PostgresSettings` and `KafkaSettings` add what
every Postgres or Kafka user has (a service subclasses the ones it needs).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mc_common.identity.settings import IdentitySettings

if TYPE_CHECKING:
    from mc_common.events.consumer import GroupTimings
    from mc_common.events.security import KafkaSecurity


class ServiceSettings(BaseSettings):
    """Fields every service has. Subclass it per service with `env_prefix="MC_<NAME>_"`."""

    model_config = SettingsConfigDict(env_prefix="MC_", extra="ignore", frozen=True)

    grpc_host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    grpc_port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    metrics_host: str = Field("127.0.0.1", description="Address of the Prometheus side port.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus side port; unset disables it."
    )
    log_level: str = Field("INFO", description="Root log level.")
    region: str = Field("local", description="Region this instance runs in.")
    shutdown_grace_s: float = Field(5.0, ge=0, description="Grace period for in-flight RPCs.")
    otel_exporter: Literal["none", "console"] = Field("none", description="Span exporter.")
    reflection: bool = Field(True, description="Serve gRPC server reflection.")
    access_log: bool = Field(
        True,
        description="One INFO line per RPC on logger mc.access (method, code, duration, tenant, "
        "principal, trace id).",
    )
    health_host: str = Field("127.0.0.1", description="Address of the plaintext health port.")
    health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Plaintext side port serving only grpc.health.v1 (for Kubernetes probes, "
        "which cannot speak mTLS); unset disables it.",
    )
    identity: IdentitySettings = Field(
        default_factory=IdentitySettings,
        description="This workload's SVID and allow lists (MC_IDENTITY_*, whatever the prefix).",
    )
    events_write_format: Literal["cloudevents", "envelope"] = Field(
        "cloudevents",
        description="Kafka event format written: CloudEvents binary mode, or the pre-CloudEvents "
        "envelope while consumers that only read it are still deployed (ADR 0051).",
    )


class PostgresSettings(ServiceSettings):
    """Settings of a service that keeps its state in Postgres (mix in beside its own fields).

    A service sets its own schema default by redeclaring `db_schema`.
    """

    postgres_dsn: str = Field(
        "postgresql://postgres@127.0.0.1:5432/postgres", description="The service's database."
    )
    db_schema: str = Field(
        "public", pattern=r"^[a-z_][a-z0-9_]*$", description="Postgres schema of its tables."
    )
    pool_min_size: int = Field(2, ge=1, description="Connections the pool keeps open.")
    pool_max_size: int = Field(10, ge=1, description="Most connections the pool opens.")


class KafkaSettings(ServiceSettings):
    """Settings of a service that produces or consumes Kafka events."""

    kafka_bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers; unset disables the service's events."
    )
    kafka_session_timeout_ms: int = Field(
        10_000,
        ge=1_000,
        description="Consumer-group session timeout (a dead member is noticed after this).",
    )
    kafka_heartbeat_interval_ms: int = Field(
        3_000, ge=100, description="Consumer-group heartbeat interval."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka transport: TLS (SSL, SASL_SSL) and/or SASL."
    )
    kafka_ssl_ca_file: Path | None = Field(
        None, description="CA bundle the Kafka brokers' certificates must chain to (else system)."
    )
    kafka_ssl_cert_file: Path | None = Field(None, description="Kafka client certificate (mTLS).")
    kafka_ssl_key_file: Path | None = Field(None, description="Key of the Kafka client cert.")
    kafka_ssl_check_hostname: bool = Field(
        True, description="Check the broker's certificate names the host connected to."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (with SASL_SSL or SASL_PLAINTEXT)."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL username.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password.")

    def group_timings(self) -> GroupTimings:
        """The consumer-group timings for `EventConsumer(..., timings=...)`."""
        from mc_common.events.consumer import GroupTimings

        return GroupTimings(
            session_timeout_ms=self.kafka_session_timeout_ms,
            heartbeat_interval_ms=self.kafka_heartbeat_interval_ms,
        )

    def kafka_security(self) -> KafkaSecurity:
        """The Kafka clients' TLS and SASL settings (ValueError when inconsistent)."""
        from mc_common.events.security import KafkaSecurity

        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            ca_file=self.kafka_ssl_ca_file,
            cert_file=self.kafka_ssl_cert_file,
            key_file=self.kafka_ssl_key_file,
            check_hostname=self.kafka_ssl_check_hostname,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=(
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            ),
        )
