"""Typed settings of the limiter service, read from `MC_LIMITER_*` environment variables."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from mc_common.config import KafkaSettings
from mc_common.pagetokens import PageTokens


class PeerRegion(BaseModel):
    """Another region of a multi-region deployment: its name and its Redis shards."""

    name: str = Field(min_length=1)
    redis_urls: list[str] = Field(min_length=1)
    key_prefix: str = "mc:rl"


class LimiterSettings(KafkaSettings):
    """Everything the limiter reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="MC_LIMITER_", extra="ignore", frozen=True)

    redis_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["redis://127.0.0.1:6379/0"],
        description="This region's Redis shards: comma-separated URLs, optionally `name=url`.",
    )
    config_redis_url: str | None = Field(
        None, description="Redis holding rules and throttle levels (default: the first shard)."
    )
    key_prefix: str = Field("mc:rl", pattern=r"^[^{}]+$")
    peers: list[PeerRegion] = Field(
        default_factory=list, description="JSON list of other regions for multi-region rules."
    )
    socket_timeout_ms: int = Field(100, ge=1, description="Redis socket timeout per shard.")
    probe_interval_ms: int = Field(250, ge=10, description="Probe of a shard marked down.")
    batch_wait_us: int = Field(
        1000,
        ge=0,
        le=10_000,
        description="While a shard's checks arrive faster than two per this wait (2,000/s at "
        "1 ms), each waits this long to share a script call with the next ones (0: never).",
    )
    decision_timeout_us: int = Field(
        500,
        ge=0,
        le=100_000,
        description="Added to a script call's deadline per decision it carries, counted from "
        "when the calls ahead of it should be done: a busy shard is never declared down "
        "(0: a fixed deadline per call, which declares busy shards down; for comparison only).",
    )
    region_sync_ms: int = Field(150, ge=10, description="Multi-region usage sync interval.")
    fallback_share: float = Field(
        1.0, gt=0, le=1, description="This replica's share of the region (1 / replicas)."
    )
    unmatched: Literal["error", "allow"] = Field(
        "error", description="Check with no matching rule: NOT_FOUND (error) or admit (allow)."
    )
    kafka_bootstrap: str | None = Field(None, description="Kafka; unset keeps events local.")
    decisions_topic: str = Field("mc.limiter.decisions", description="Denial aggregates.")
    audit_topic: str = Field("mc.limiter.audit", description="Operator changes.")
    config_snapshot_path: str | None = Field(
        None,
        description="File keeping the last good configuration: with the config Redis "
        "unreachable at start-up the limiter serves it (degraded) instead of exiting.",
    )
    fairshare_capacity: int = Field(5000, ge=1, description="Global concurrency cap.")
    fairshare_key_prefix: str = Field("mc:fs", description="Fair-share keys in Redis.")
    fairshare_lease_ms: int = Field(30_000, ge=100, description="Default slot lease.")
    fairshare_collect_ms: int = Field(
        15_000,
        ge=0,
        description="How long a slot granted from the queue waits for its requester to collect "
        "it (AcquireSlot, GetSlot, RenewSlot) before it is reclaimed; 0: the whole lease.",
    )
    fairshare_timeout_ms: int = Field(
        2_000, ge=1, description="Bound on every fair-share Redis call (then UNAVAILABLE)."
    )
    rule_files: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Declarative rules files (envoyproxy/ratelimit format) or directories of "
        "them, comma-separated, applied at start (a mounted ConfigMap); an invalid file fails "
        "the start.",
    )
    page_token_keys: list[SecretStr] = Field(
        default_factory=list,
        description="HMAC keys of ListRules page tokens (16+ bytes each): the first signs, all "
        "verify. Unset: a random key kept in the config Redis, shared by the replicas.",
    )
    envoy_tenant_entry: str = Field(
        "tenant", description="Envoy descriptor entry whose value is the MC tenant."
    )
    envoy_token_entry: str = Field(
        "token", description="Envoy descriptor entry whose value is the MC token."
    )
    envoy_invalid: Literal["over_limit", "ok"] = Field(
        "over_limit",
        description="What an invalid Envoy descriptor gets (it never masks another's "
        "OVER_LIMIT): OVER_LIMIT (fail closed) or OK.",
    )
    envoy_invalid_by_domain: dict[str, Literal["over_limit", "ok"]] = Field(
        default_factory=dict,
        description='Per-domain override of ENVOY_INVALID, JSON: {"internal": "ok"}.',
    )
    envoy_headers: Literal["none", "ietf", "x-ratelimit"] = Field(
        "none",
        description="Rate limit headers Envoy adds to responses: IETF RateLimit / "
        "RateLimit-Policy, Envoy's X-RateLimit-*, or none.",
    )

    @field_validator("redis_urls", "rule_files", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def shard_urls(self) -> dict[str, str]:
        """`{shard name: url}`; unnamed URLs are named `shard-<n>`."""
        out: dict[str, str] = {}
        for index, item in enumerate(self.redis_urls):
            name, sep, url = item.partition("=")
            if sep and "://" not in name:
                out[name] = url
            else:
                out[f"shard-{index}"] = item
        return out

    def page_tokens(self) -> PageTokens | None:
        """ListRules page tokens with the configured keys (None: the store's shared key)."""
        if not self.page_token_keys:
            return None
        return PageTokens([k.get_secret_value().encode() for k in self.page_token_keys])
