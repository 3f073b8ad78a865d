"""Local infrastructure for tests: `mc_common.devinfra` plus test-only helpers.

Kept as the tests' import path; the servers themselves live in `mc_common.devinfra` (which the
CLI uses without pytest).
"""

from __future__ import annotations

import uuid
from typing import Final

from mc_common.devinfra import (
    LOCAL_POSTGRES_DSNS,
    LOCAL_REDIS_URL,
    InfraError,
    TansuBroker,
    create_database,
    database_dsn,
    drop_database,
    free_port,
    kafka_metadata_ok,
    postgres_dsn,
    postgres_reachable,
    redis_reachable,
    redis_url,
    start_tansu,
    tansu_binary,
)
from mc_common.events.consumer import GroupTimings

__all__ = [
    "FAST_CONSUMER_TIMINGS",
    "LOCAL_POSTGRES_DSNS",
    "LOCAL_REDIS_URL",
    "InfraError",
    "TansuBroker",
    "create_database",
    "database_dsn",
    "drop_database",
    "free_port",
    "kafka_metadata_ok",
    "postgres_dsn",
    "postgres_reachable",
    "redis_reachable",
    "redis_url",
    "start_tansu",
    "tansu_binary",
    "unique_name",
]

FAST_CONSUMER_TIMINGS: Final = GroupTimings(
    session_timeout_ms=2_000, heartbeat_interval_ms=300, rebalance_timeout_ms=2_000
)
"""Consumer-group timings for tests: `EventConsumer(..., timings=FAST_CONSUMER_TIMINGS)`.

Tansu (0.6) answers a JoinGroup only after about half the session timeout, rounded up to
whole seconds, so with aiokafka's 10 s default every consumer start takes ~5 s; with 2 s it
takes ~1 s.
"""


def unique_name(prefix: str = "mc_test") -> str:
    """`<prefix>_<32 hex chars>`: unique enough for databases, topics, groups and key spaces."""
    return f"{prefix}_{uuid.uuid4().hex}"
