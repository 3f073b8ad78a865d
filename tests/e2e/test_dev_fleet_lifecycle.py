"""`maestro dev up` stops cleanly at any moment and never leaves orphans or stale endpoints."""

from __future__ import annotations

import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path

from fleet_support import MAESTRO, DevUp, await_condition, fleet_env, pid_gone

from maestro_cli.fleet import read_endpoint
from mc_common.devinfra import EmbeddedPostgres, port_is_free, postgres_reachable
from mc_common.devinfra.postgres import postgres_binaries
from mc_common.testing import infra


def database() -> str:
    return f"mc_devtest_{uuid.uuid4().hex[:8]}"


def test_ctrl_c_while_the_consumer_joins_stops_pql_within_the_grace(
    tmp_path: Path, pg_admin_dsn: str, redis_prefix: str
) -> None:
    name = database()
    env = fleet_env(pg_admin_dsn, name, redis_prefix)
    # Tansu answers a JoinGroup after half the session timeout: with 60 s the consumer is
    # still joining when the fleet reports ready and is interrupted.
    env["MC_PQL_KAFKA_SESSION_TIMEOUT_MS"] = "60000"
    data = tmp_path / "dev"
    fleet = DevUp(["--only", "pql", "--data-dir", str(data), "--stop-grace", "30"], env)
    try:
        pid = fleet.pid_of("pql")
        fleet.wait_for("ready:")
        fleet.process.send_signal(signal.SIGINT)
        code = fleet.finish()
    finally:
        if fleet.process.poll() is None:
            fleet.process.kill()
        infra.drop_database(pg_admin_dsn, name)

    log = (data / "pql.log").read_text().splitlines()
    assert code == 0, "\n".join(fleet.lines)
    assert "pql stopped" in fleet.lines
    assert not any("killed" in line for line in fleet.lines)
    assert not any("Joined group" in line for line in log), "the join was not interrupted"
    assert json.loads(log[-1])["msg"] == "stopped"
    assert pid_gone(pid)
    assert not (data / "endpoints.json").exists()


def test_ctrl_c_before_the_fleet_is_ready_stops_what_started(
    tmp_path: Path, pg_admin_dsn: str, redis_prefix: str
) -> None:
    name = database()
    fleet = DevUp(["--data-dir", str(tmp_path)], fleet_env(pg_admin_dsn, name, redis_prefix))
    try:
        pids = [fleet.pid_of("limiter"), fleet.pid_of("pql")]
        fleet.process.send_signal(signal.SIGINT)
        code = fleet.finish()
    finally:
        if fleet.process.poll() is None:
            fleet.process.kill()
        infra.drop_database(pg_admin_dsn, name)

    assert code == 0, "\n".join(fleet.lines)
    assert not any("killed" in line for line in fleet.lines)
    assert all(pid_gone(pid) for pid in pids)
    assert not (tmp_path / "endpoints.json").exists()


def test_killed_hard_its_children_die_and_its_endpoints_are_stale(
    tmp_path: Path, redis_prefix: str
) -> None:
    env = fleet_env("", "unused", redis_prefix)
    env.pop("MC_POSTGRES_DSN")
    fleet = DevUp(["--only", "limiter", "--data-dir", str(tmp_path)], env)
    pid = fleet.pid_of("limiter")
    kafka = fleet.wait_for("kafka ").split()[1]
    fleet.wait_for("ready:")
    address = read_endpoint(tmp_path, "limiter")
    assert address is not None

    fleet.process.kill()
    fleet.finish()

    await_condition(lambda: pid_gone(pid), 30, "the limiter dying with dev up")
    host, port = kafka.rsplit(":", 1)
    await_condition(lambda: port_is_free(int(port), host), 30, "the broker freeing its port")
    assert port_is_free(int(address.rsplit(":", 1)[1]))
    assert (tmp_path / "endpoints.json").exists()  # left behind, but recognised as stale:
    assert read_endpoint(tmp_path, "limiter") is None

    # ... and a new fleet takes the data dir over.
    again = DevUp(["--only", "limiter", "--data-dir", str(tmp_path)], env)
    try:
        again.wait_for("ready:")
        assert read_endpoint(tmp_path, "limiter") is not None
        again.process.send_signal(signal.SIGINT)
        assert again.finish() == 0
    finally:
        if again.process.poll() is None:
            again.process.kill()


def test_a_second_fleet_on_a_live_data_dir_is_refused(tmp_path: Path, redis_prefix: str) -> None:
    env = fleet_env("", "unused", redis_prefix)
    env.pop("MC_POSTGRES_DSN")
    first = DevUp(["--only", "limiter", "--data-dir", str(tmp_path)], env)
    try:
        first.wait_for("ready:")
        second = DevUp(["--only", "limiter", "--data-dir", str(tmp_path)], env)
        assert second.finish() == 2
        assert second.lines == [
            f"maestro dev up failed: a fleet (pid {first.process.pid}) already runs with "
            f"data dir {tmp_path}"
        ]
        first.process.send_signal(signal.SIGINT)
        assert first.finish() == 0
    finally:
        if first.process.poll() is None:
            first.process.kill()


def test_an_unreachable_configured_server_is_one_line_naming_the_variable(
    tmp_path: Path,
) -> None:
    dead = f"127.0.0.1:{infra.free_port()}"
    cases = [
        ("MC_POSTGRES_DSN", f"postgresql://postgres@{dead}/postgres", "pql"),
        ("MC_REDIS_URL", f"redis://{dead}/0", "limiter"),
        ("MC_KAFKA_BOOTSTRAP", dead, "limiter"),
    ]
    for variable, value, service in cases:
        env = {**os.environ, variable: value}
        fleet = DevUp(["--only", service, "--data-dir", str(tmp_path / variable)], env)

        assert fleet.finish() == 2
        assert len(fleet.lines) == 1, fleet.lines
        assert fleet.lines[0].startswith(f"maestro dev up failed: {variable}={value} ")
        assert "not reachable" in fleet.lines[0]
        assert "--embedded" in fleet.lines[0]


def test_embedded_forces_embedded_servers(tmp_path: Path, pg_admin_dsn: str) -> None:
    env = {
        **os.environ,
        "MC_POSTGRES_DSN": pg_admin_dsn,
        "MC_REDIS_URL": "redis://unused:1/0",
        "MC_IDENTITY_MODE": "plaintext-dev",  # mTLS is tested elsewhere
    }
    fleet = DevUp(["--embedded", "--data-dir", str(tmp_path)], env)
    try:
        fleet.wait_for("starting embedded Postgres")
        fleet.wait_for("starting embedded Redis")
        postgres = fleet.wait_for("postgres ")
        redis = fleet.wait_for("redis ")
        fleet.wait_for("ready:")
        # A tenant without receipts: said so, with its own exit code.
        verify = subprocess.run(
            [*MAESTRO, "receipts", "verify", "--tenant", "nobody-yet", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert verify.returncode == 3, verify.stdout + verify.stderr
        assert "tenant nobody-yet has no receipts" in verify.stdout
        fleet.process.send_signal(signal.SIGINT)
        assert fleet.finish() == 0, "\n".join(fleet.lines)
    finally:
        if fleet.process.poll() is None:
            fleet.process.kill()
    assert pg_admin_dsn.split("@")[-1].split("/")[0] not in postgres
    assert "unused" not in redis


def modes(path: Path) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in (path, *path.parents)}


def test_embedded_postgres_adds_no_user_and_loosens_nothing_outside_its_directory() -> None:
    users = {entry.pw_name for entry in pwd.getpwall()}
    binaries = postgres_binaries()
    before = modes(binaries) | {f: stat.S_IMODE(f.stat().st_mode) for f in binaries.iterdir()}
    server = EmbeddedPostgres.start()
    try:
        assert postgres_reachable(server.dsn)
        outside = modes(server.directory.parent)
        owner = server.directory.stat().st_uid
    finally:
        server.stop()

    assert {entry.pw_name for entry in pwd.getpwall()} == users
    after = modes(binaries) | {f: stat.S_IMODE(f.stat().st_mode) for f in binaries.iterdir()}
    assert after == before
    assert modes(server.directory.parent) == outside
    assert (owner != 0) == (os.geteuid() == 0)  # as root, it runs as an unprivileged user
    assert not server.directory.exists()


def test_an_unreachable_fleet_is_an_error_with_a_hint(tmp_path: Path) -> None:
    env = {**os.environ, "MC_IDENTITY_MODE": "plaintext-dev"}
    address = f"127.0.0.1:{infra.free_port()}"
    verify = subprocess.run(
        [*MAESTRO, "receipts", "verify", "--tenant", "acme", "--address", address],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )

    assert verify.returncode == 2
    assert "is the fleet running? Start it with `scripts/dev-up.sh`" in verify.stderr


OWNER = """
import sys, time
from mc_common.devinfra import EmbeddedPostgres, EmbeddedRedis
postgres, redis = EmbeddedPostgres.start(), EmbeddedRedis.start()
print(postgres.process.pid, redis.process.pid, flush=True)
time.sleep(600)
"""


def test_embedded_servers_die_with_a_killed_owner() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert owner.stdout is not None
        pids = [int(pid) for pid in owner.stdout.readline().split()]
        assert len(pids) == 2
    finally:
        owner.kill()
        owner.wait(60)
    # As root the Postgres server runs as another user; its parent-death signal survives that.
    await_condition(lambda: all(pid_gone(pid) for pid in pids), 60, "the servers dying")
