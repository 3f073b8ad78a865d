"""Every RPC of every service of the dev fleet, driven with generated and mutated messages.

The fleet is the one `maestro dev up` runs (every declared service, `mc_common.manifest`), on
this test's own database, Redis key prefix and broker. The RPCs are discovered from each
running server through gRPC reflection, so a service or RPC added later is fuzzed without a
change here. For every call the suite asserts:

- the answer is a status the caller can act on: never INTERNAL, never UNKNOWN;
- a rejected call changed nothing: no row of any service table differs afterwards (tables
  written only by background work are listed in `BACKGROUND`) and no Redis key was created.
  Existing keys may change: the limiter's scripts reclaim lapsed leases and windows on every
  call, whatever its outcome, so a change there is the clock's, not the request's.

Each RPC first gets a deterministic sweep (`hostile_variants`: one field at a time set to NUL
text, 100,000 characters, an out-of-range timestamp), then generated and mutated messages.
With the universal NUL/timestamp rule of `mc_common.validation` switched off, the sweep finds
the INTERNALs of issue 7 in GetExecution, ListReceipts, GetPolicyDecision and
ListPolicyDecisions. The budget is fixed (`MC_FUZZ_EXAMPLES` examples per RPC, derandomized,
so CI runs are reproducible); raise it and set `MC_FUZZ_SEED` for a deeper local hunt.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import redis
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from psycopg import sql

from maestro_cli.fleet import Fleet, dev_identity
from mc_common.testing import infra
from mc_common.testing.fuzz import hostile_variants, messages, mutated

EXAMPLES = int(os.environ.get("MC_FUZZ_EXAMPLES", "12"))
SEED = int(os.environ.get("MC_FUZZ_SEED", "0"))
CALL_TIMEOUT_S = 5.0
STREAM_TIMEOUT_S = 2.0
STREAM_MAX_ITEMS = 50
INFRASTRUCTURE = ("grpc.",)  # health and reflection: hosted, not ours
BACKGROUND = frozenset(
    {
        "schema_migrations",  # written by start-up only
        "processed_events",  # the decisions consumer (events from edge-policy)
        "policy_decisions",  # idem: decisions arrive from edge-policy's evaluations
        "log_checkpoints",  # the receipt log signs checkpoints on a timer
    }
)
SWEEP_METADATA = (
    [("x-mc-tenant", "fuzz-a")],
    [("x-mc-tenant", "fuzz-a"), ("x-mc-principal", "operator:fuzz")],
)
NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


@dataclass(frozen=True)
class Rpc:
    """One discovered RPC and where it is served."""

    service: str
    address: str
    method: MethodDescriptor
    data_dir: Path

    def channel(self) -> grpc.Channel:
        """A channel with the dev fleet's CLI identity (mTLS, SPIFFE; plaintext in dev mode)."""
        return dev_identity(self.data_dir).sync_channel(self.address, server=self.service)

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    def __str__(self) -> str:
        return f"{self.service}{self.path}"


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    pg_admin_dsn: str,
    redis_server_url: str,
    kafka_bootstrap: str,
) -> Iterator[tuple[Fleet, str, str]]:
    database = f"mc_fuzz_{uuid.uuid4().hex[:10]}"
    prefix = f"mc-test:fuzz-{uuid.uuid4().hex[:10]}:"
    env = {
        "MC_POSTGRES_DSN": pg_admin_dsn,
        "MC_DEV_DATABASE": database,
        "MC_REDIS_URL": redis_server_url,
        "MC_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "MC_LIMITER_KEY_PREFIX": f"{prefix}rl",
        "MC_LIMITER_FAIRSHARE_KEY_PREFIX": f"{prefix}fs",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    data_dir: Path = tmp_path_factory.mktemp("fuzz-fleet")
    try:
        # Any free ports: other fleets on this machine may hold the declared ones.
        with Fleet(data_dir, any_ports=True).running() as running:
            yield running, infra.database_dsn(pg_admin_dsn, database), prefix
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        with contextlib.suppress(Exception):
            infra.drop_database(pg_admin_dsn, database)
        with contextlib.suppress(Exception):
            client = redis.Redis.from_url(redis_server_url)
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)


def discover(fleet: Fleet) -> list[Rpc]:
    """Every RPC each running service serves, from its own reflection service."""
    found: list[Rpc] = []
    for service in fleet.services:
        identity = dev_identity(fleet.data_dir)
        with identity.sync_channel(service.address, server=service.definition.name) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            pool = DescriptorPool(database)
            for name in database.get_services():
                if name.startswith(INFRASTRUCTURE):
                    continue
                descriptor = pool.FindServiceByName(name)
                found += [
                    Rpc(service.definition.name, service.address, method, fleet.data_dir)
                    for method in descriptor.methods
                ]
    return found


class Snapshot:
    """What every service stores: rows of every table (bar `BACKGROUND`) and limiter keys."""

    def __init__(self, dsn: str, redis_url: str, prefix: str) -> None:
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._redis = redis.Redis.from_url(redis_url)
        self._prefix = prefix
        tables = self._conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN "
            "('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall()
        parts = [
            sql.SQL(
                "SELECT {name}, md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) "
                "FROM {schema}.{table} AS t"
            ).format(
                name=sql.Literal(f"{schema}.{table}"),
                schema=sql.Identifier(schema),
                table=sql.Identifier(table),
            )
            for schema, table in tables
            if table not in BACKGROUND
        ]
        self._query = sql.SQL(" UNION ALL ").join(parts) if parts else None

    def rows(self) -> dict[str, str]:
        if self._query is None:
            return {}
        return dict(self._conn.execute(self._query).fetchall())

    def keys(self) -> dict[bytes, bytes | None]:
        out: dict[bytes, bytes | None] = {}
        for key in self._redis.scan_iter(match=f"{self._prefix}*", count=1000):
            out[key] = self._redis.dump(key)
        return out

    def close(self) -> None:
        self._conn.close()
        self._redis.close()


METADATA = st.one_of(
    st.just([("x-mc-tenant", "fuzz-a")]),  # a tenant (most RPCs need one), more often
    st.just([("x-mc-tenant", "fuzz-a")]),
    st.just([("x-mc-tenant", "fuzz-a")]),
    st.just([("x-mc-tenant", "fuzz-b")]),
    st.just([]),
    st.just([("x-mc-principal", "operator:fuzz")]),
    st.just([("x-mc-tenant", "fuzz-a"), ("x-mc-principal", "operator:fuzz")]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80).map(
        lambda t: [("x-mc-tenant", t.strip() or "x")]
    ),
)


def call(channel: grpc.Channel, rpc: Rpc, payload: bytes, metadata: list[Any]) -> grpc.StatusCode:
    """Send raw request bytes; the status code of the answer (OK, or the error's)."""
    identity = (lambda b: b), (lambda b: b)
    method = rpc.method
    try:
        if method.server_streaming:
            stream = (
                channel.stream_stream(rpc.path, *identity)(
                    iter([payload]), metadata=metadata, timeout=STREAM_TIMEOUT_S
                )
                if method.client_streaming
                else channel.unary_stream(rpc.path, *identity)(
                    payload, metadata=metadata, timeout=STREAM_TIMEOUT_S
                )
            )
            for count, _ in enumerate(stream):
                if count >= STREAM_MAX_ITEMS:
                    stream.cancel()
                    break
            return grpc.StatusCode.OK
        if method.client_streaming:
            channel.stream_unary(rpc.path, *identity)(
                iter([payload]), metadata=metadata, timeout=CALL_TIMEOUT_S
            )
        else:
            channel.unary_unary(rpc.path, *identity)(
                payload, metadata=metadata, timeout=CALL_TIMEOUT_S
            )
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.CANCELLED:
            return grpc.StatusCode.OK  # our own cancel of a long stream
        return code  # type: ignore[no-any-return]


def fuzz_rpc(rpc: Rpc, snapshot: Snapshot, failures: list[str], codes: Counter[str]) -> None:
    input_type = rpc.method.input_type
    generated = messages(input_type).map(lambda m: m.SerializeToString())
    payloads = st.one_of(generated, generated.flatmap(mutated))
    channel = rpc.channel()
    state = {"rows": snapshot.rows(), "keys": snapshot.keys()}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=SEED == 0,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # report the first failure; no shrinking
        suppress_health_check=list(HealthCheck),
    )
    @given(payload=payloads, metadata=METADATA)
    def run(payload: bytes, metadata: list[Any]) -> None:
        code = call(channel, rpc, payload, metadata)
        codes[code.name] += 1
        assert code not in NEVER, f"{rpc}: {code.name} for {payload!r} with {metadata}"
        rows, keys = snapshot.rows(), snapshot.keys()
        if code not in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED):
            changed = sorted(t for t in rows if rows.get(t) != state["rows"].get(t))
            added = sorted(k for k in keys if k not in state["keys"])
            assert not changed and not added, (
                f"{rpc}: rejected with {code.name} but changed tables {changed} and "
                f"keys {added[:5]} (request {payload!r}, metadata {metadata})"
            )
        state["rows"], state["keys"] = rows, keys

    if SEED:
        run = seed(SEED)(run)
    try:
        for variant in hostile_variants(input_type):  # one hostile field at a time, first
            for metadata in SWEEP_METADATA:
                run.hypothesis.inner_test(variant.SerializeToString(), metadata)  # type: ignore[attr-defined]
        run()
    except Exception as error:  # one failure per RPC is enough to act on
        failures.append(str(error).splitlines()[0][:2000])
    finally:
        channel.close()


def test_no_rpc_answers_internal_or_changes_state_when_rejected(
    fleet: tuple[Fleet, str, str], redis_server_url: str
) -> None:
    running, dsn, prefix = fleet
    rpcs = discover(running)
    services = {rpc.service for rpc in rpcs}
    assert {"pql", "limiter"} <= services, services  # discovery found the fleet
    assert len(rpcs) >= 20
    snapshot = Snapshot(dsn, redis_server_url, prefix)
    failures: list[str] = []
    codes: Counter[str] = Counter()
    started = time.monotonic()
    try:
        for rpc in rpcs:
            fuzz_rpc(rpc, snapshot, failures, codes)
    finally:
        snapshot.close()
    elapsed = time.monotonic() - started
    print(f"fuzzed {len(rpcs)} RPCs x {EXAMPLES} examples in {elapsed:.1f}s: {dict(codes)}")
    assert not failures, "\n".join(failures)
