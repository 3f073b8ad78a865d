"""The limiter's declaration (entry point `mc.services: limiter`); see
docs/adding-a-service.md."""

from __future__ import annotations

from collections.abc import Mapping

from mc_common.manifest import DevContext, Infra, ServiceManifest
from mc_limiter.settings import LimiterSettings

DEV_RULES_DIR = "limiter-rules"


def dev_env(context: DevContext) -> Mapping[str, str]:
    """The fleet's Redis as the only shard, the broker for decision events, and the rules
    files in ``<data-dir>/limiter-rules/`` (when that directory exists) applied at start."""
    env = {"REDIS_URLS": context.redis_url, "KAFKA_BOOTSTRAP": context.kafka_bootstrap}
    rules = context.data_dir / DEV_RULES_DIR
    if rules.is_dir():
        env["RULE_FILES"] = str(rules)
    return env


MANIFEST = ServiceManifest(
    name="limiter",
    module="mc_limiter.main",
    command="mc-limiter",
    settings=LimiterSettings,
    grpc_port=7302,
    metrics_port=9302,
    api="`mc.limiter.v1.LimiterService`, `FairShareService`, Envoy `RateLimitService`",
    needs=frozenset({Infra.REDIS, Infra.KAFKA}),
    dev_env=dev_env,
)
