"""Typed settings of the gateway, read from `MC_GATEWAY_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mc_common.config import ServiceSettings


class GatewaySettings(ServiceSettings):
    """Everything the gateway reads from its environment.

    `grpc_port` serves `mc.gateway.v1.ApiKeyService`; `http_port` serves REST and OpenAPI.
    """

    model_config = SettingsConfigDict(env_prefix="MC_GATEWAY_", extra="ignore", frozen=True)

    http_host: str = Field("127.0.0.1", description="Address the REST server binds.")
    http_port: int = Field(0, ge=0, le=65535, description="REST port; 0 picks a free port.")
    descriptor_set_path: Path | None = Field(
        None, description="FileDescriptorSet to serve; unset uses mc-protos' descriptor_set.binpb."
    )
    upstreams: dict[str, str] = Field(
        default_factory=dict,
        description="Upstream gRPC address by full service name or package (the longest "
        'prefix wins), e.g. {"mc.pql.v1": "127.0.0.1:7301"}. Services with no upstream are '
        "not exposed. mc.gateway.v1.ApiKeyService is always served by the gateway itself.",
    )
    upstream_servers: dict[str, str] = Field(
        default_factory=dict,
        description="The workload each upstream must prove it is over mTLS (service name or "
        "SPIFFE ID), by the same keys as `upstreams`; default: the package's service label "
        '(`mc.pql.v1` -> `pql`), e.g. {"mc.policy.v1": "edge-policy"}.',
    )
    default_timeout_s: float = Field(10.0, gt=0, description="Deadline without grpc-timeout.")
    max_timeout_s: float = Field(60.0, gt=0, description="Longest deadline a caller may ask.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body.")

    # API keys
    postgres_dsn: str = Field(
        "postgresql://postgres@127.0.0.1:5432/postgres", description="API key database."
    )
    db_schema: str = Field("gateway", pattern=r"^[a-z_][a-z0-9_]*$", description="Schema.")
    pool_max_size: int = Field(4, ge=1)
    key_cache_ttl_s: float = Field(
        2.0,
        gt=0,
        le=5.0,
        description="How long a key lookup is cached; revocations also arrive by NOTIFY at "
        "once, so this bounds staleness only while the notification connection is down.",
    )
    key_pepper: str | None = Field(
        None, description="Optional secret mixed into key hashes (HMAC-SHA256); rotate never."
    )

    # OIDC
    oidc_issuer: str | None = Field(None, description="Expected `iss`; unset disables JWTs.")
    oidc_audience: str = Field("maestro-conductor", description="Expected `aud`.")
    oidc_jwks_url: str | None = Field(None, description="JWKS URL of the issuer.")
    oidc_algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256"], description="Accepted JWS algorithms."
    )
    oidc_leeway_s: int = Field(30, ge=0, le=300, description="Clock skew allowed on exp/nbf.")
    oidc_jwks_ttl_s: float = Field(300.0, gt=0, description="How long a fetched JWKS is used.")
    oidc_jwks_min_refresh_s: float = Field(
        10.0, ge=0, description="Least time between refetches triggered by an unknown `kid`."
    )
    oidc_tenant_claim: str = Field("mc_tenant", description="Claim (dotted path) with the tenant.")
    oidc_principal_claim: str = Field("sub", description="Claim naming the principal.")
    oidc_roles_claim: str = Field("roles", description="Claim (dotted path) listing roles.")
    oidc_operator_role: str = Field("mc-operator", description="Role that makes an operator.")

    # Rate limiting at the door
    limiter_address: str | None = Field(
        None, description="Limiter gRPC address; unset disables rate limiting at the door."
    )
    limiter_server: str = Field(
        "limiter", description="The workload the limiter must prove it is (mTLS)."
    )
    rate_limit_key: str = Field(
        "gateway:requests", description="Limiter key every request spends one unit of."
    )
    rate_limit_timeout_s: float = Field(1.0, gt=0, description="Deadline of the limiter call.")
    rate_limit_failure: Literal["open", "closed"] = Field(
        "open", description="Admit (open) or refuse with 503 (closed) when the limiter fails."
    )
