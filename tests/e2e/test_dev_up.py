"""End to end: `maestro dev up` starts the whole fleet; `maestro receipts verify` checks a chain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
from pql_support import md, record

from maestro_cli.fleet import dev_identity
from mc.limiter.v1 import limiter_pb2 as lpb
from mc.limiter.v1 import limiter_service_pb2 as lsvc
from mc.limiter.v1 import limiter_service_pb2_grpc as lsvc_grpc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc_common.testing import infra

MAESTRO = [sys.executable, "-m", "maestro_cli.main"]


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 120) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise AssertionError(f"dev up exited {proc.returncode}: {''.join(lines)}")
            continue
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"no {needle!r} within {timeout}s: {''.join(lines)}")


def test_dev_up_runs_the_fleet_and_stops_cleanly(
    tmp_path: Path, pg_admin_dsn: str, redis_prefix: str
) -> None:
    database = f"mc_devtest_{uuid.uuid4().hex[:8]}"
    # The dev fleet is a trust domain of its own: none of the test session's identity.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MC_IDENTITY_")}
    env = {
        **inherited,
        "MC_POSTGRES_DSN": pg_admin_dsn,
        "MC_DEV_DATABASE": database,
        "MC_LIMITER_KEY_PREFIX": f"{redis_prefix}rl",
        "MC_LIMITER_FAIRSHARE_KEY_PREFIX": f"{redis_prefix}fs",
    }
    env.pop("MC_KAFKA_BOOTSTRAP", None)
    data = tmp_path / "dev"
    proc = subprocess.Popen(
        [*MAESTRO, "dev", "up", "--any-ports", "--data-dir", str(data)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        table = "".join(wait_for_line(proc, "ready:"))
        for component in ("postgres", "redis", "kafka", "pql", "limiter"):
            assert component in table
        endpoints = json.loads((data / "endpoints.json").read_text())
        cli = dev_identity(data)  # the SVID `dev up` issued to the CLI
        assert (data / "identity" / "ca" / "ca_key.pem").stat().st_mode & 0o077 == 0
        with cli.sync_channel(endpoints["pql"], server="pql") as channel:
            stub = svc_grpc.ProvenanceServiceStub(channel)
            for i in range(3):
                stub.RecordReceipt(record(f"e{i}", i), metadata=md("acme"))
        with cli.sync_channel(endpoints["limiter"], server="limiter") as channel:
            limiter = lsvc_grpc.LimiterServiceStub(channel)
            one_per_minute = lpb.Rule(
                id="devtest",
                scope=lpb.RULE_SCOPE_TENANT,
                key="devtest:*",
                limits=[
                    lpb.Limit(
                        name="m", algorithm=lpb.ALGORITHM_TOKEN_BUCKET, limit=1, window_ms=60_000
                    )
                ],
            )
            limiter.PutRule(
                lsvc.PutRuleRequest(rule=one_per_minute),
                metadata=(("x-mc-principal", "operator:test"),),
            )
            check = lsvc.CheckRequest(tenant="acme", key="devtest:x", cost=1)
            verdicts = [limiter.Check(check, metadata=md("acme")).allowed for _ in range(2)]
            assert verdicts == [True, False]
        verify = subprocess.run(
            [*MAESTRO, "receipts", "verify", "--tenant", "acme", "--data-dir", str(data)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "is intact: size 3" in verify.stdout

        # Break the chain behind the service's back: verify must exit 1 and say where.
        dsn = infra.database_dsn(pg_admin_dsn, database)
        with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("DELETE FROM pql.receipts WHERE tenant = 'acme' AND sequence = 2")
        broken = subprocess.run(
            [*MAESTRO, "receipts", "verify", "--tenant", "acme", "--data-dir", str(data)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert "BROKEN" in broken.stdout and "RECEIPTS_MISSING" in broken.stdout
        full = subprocess.run(
            [*MAESTRO, "receipts", "verify", "--tenant", "acme", "--data-dir", str(data), "--full"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert full.returncode == 1 and "#2 SEQUENCE_GAP" in full.stdout, full.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        infra.drop_database(pg_admin_dsn, database)
    assert proc.returncode == 0, out
    assert "stopped" in out
    assert not (data / "endpoints.json").exists()
