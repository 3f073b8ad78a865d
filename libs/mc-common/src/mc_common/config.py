"""Typed settings from the environment: one settings class per service, sharing these fields."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mc_common.identity.settings import IdentitySettings


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
