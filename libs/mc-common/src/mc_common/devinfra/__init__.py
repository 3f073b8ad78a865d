"""Local infrastructure for `maestro dev up` and the tests: Kafka (Tansu), Postgres, Redis.

No pytest here: the CLI uses this package at run time, `mc_common.testing` builds its fixtures
on it. Every server started here dies with the process that started it. Resolution, for the
tests (`postgres_dsn()`, `redis_url()`): `$MC_TEST_*`, then `$MC_*`, then the machine's server
on its default port, else an embedded one started once per process (`maestro dev up` resolves
its own way, see `maestro_cli.fleet`).
"""

from __future__ import annotations

import atexit
import functools
import os

from mc_common.devinfra.kafka import (
    TansuBroker,
    kafka_metadata_ok,
    kafka_reachable,
    start_tansu,
    tansu_binary,
)
from mc_common.devinfra.postgres import (
    LOCAL_POSTGRES_DSNS,
    EmbeddedPostgres,
    create_database,
    database_dsn,
    drop_database,
    ensure_database,
    machine_postgres_dsn,
    postgres_reachable,
    redact,
)
from mc_common.devinfra.process import (
    InfraError,
    die_with_parent,
    free_port,
    port_is_free,
    stop_process,
)
from mc_common.devinfra.redis import (
    LOCAL_REDIS_URL,
    EmbeddedRedis,
    redis_binary,
    redis_reachable,
    redis_url_reachable,
)

__all__ = [
    "LOCAL_POSTGRES_DSNS",
    "LOCAL_REDIS_URL",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "InfraError",
    "TansuBroker",
    "create_database",
    "database_dsn",
    "die_with_parent",
    "drop_database",
    "embedded_postgres",
    "embedded_redis",
    "ensure_database",
    "free_port",
    "kafka_metadata_ok",
    "kafka_reachable",
    "machine_postgres_dsn",
    "port_is_free",
    "postgres_dsn",
    "postgres_reachable",
    "redact",
    "redis_binary",
    "redis_reachable",
    "redis_url",
    "redis_url_reachable",
    "start_tansu",
    "stop_process",
    "tansu_binary",
]


@functools.cache
def embedded_postgres() -> EmbeddedPostgres:
    """One embedded Postgres per process, stopped at exit."""
    server = EmbeddedPostgres.start()
    atexit.register(server.stop)
    return server


@functools.cache
def embedded_redis() -> EmbeddedRedis:
    """One embedded Redis per process, stopped at exit."""
    server = EmbeddedRedis.start()
    atexit.register(server.stop)
    return server


def postgres_dsn() -> str:
    """An admin DSN (may create databases) of a running Postgres; see the module docstring."""
    for variable in ("MC_TEST_POSTGRES_DSN", "MC_POSTGRES_DSN"):
        if dsn := os.environ.get(variable):
            return dsn
    return machine_postgres_dsn() or embedded_postgres().dsn


def redis_url() -> str:
    """The URL of a running Redis; see the module docstring."""
    for variable in ("MC_TEST_REDIS_URL", "MC_REDIS_URL"):
        if url := os.environ.get(variable):
            return url
    if redis_reachable():
        return LOCAL_REDIS_URL
    return embedded_redis().url
