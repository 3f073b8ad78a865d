"""Test support shared by every MC package: local infrastructure and a pytest plugin.

`mc_common.testing.infra` starts or finds Kafka (Tansu), Postgres and Redis;
`mc_common.testing.plugin` turns that into fixtures (register it with
`pytest_plugins = ["mc_common.testing.plugin"]` in the repository's root conftest).
"""

from __future__ import annotations

from mc_common.testing.infra import (
    FAST_CONSUMER_TIMINGS,
    InfraError,
    TansuBroker,
    create_database,
    database_dsn,
    drop_database,
    free_port,
    postgres_dsn,
    redis_url,
    start_tansu,
    unique_name,
)

__all__ = [
    "FAST_CONSUMER_TIMINGS",
    "InfraError",
    "TansuBroker",
    "create_database",
    "database_dsn",
    "drop_database",
    "free_port",
    "postgres_dsn",
    "redis_url",
    "start_tansu",
    "unique_name",
]
