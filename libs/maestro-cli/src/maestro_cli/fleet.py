"""The local fleet: which services exist, how to start each, and the supervisor that runs them.

`maestro dev up` resolves Postgres and Redis (configured URL, else the machine's server, else an
embedded one), starts a Tansu Kafka broker, starts every service as a child process with its
settings in the environment (each applies its own migrations at start-up), waits until all
report SERVING on gRPC health, prints their endpoints, and stops everything on Ctrl-C.

Identity: the fleet is a trust domain of its own, `mc.dev`. Its CA lives in
`<data-dir>/identity/ca` (made on first use, kept across runs); each `dev up` issues fresh
SVIDs to every service and to the CLI (`maestro-cli`) and gateway clients, so services serve
mTLS exactly as in production, and the CLI calls them with its SVID. The dev fleet allows
`maestro-cli` beside the gateway to assert tenants and operators (production allows only the
gateway). `MC_IDENTITY_MODE=plaintext-dev` runs everything in plaintext on loopback instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mc_common.identity import IdentitySettings, WorkloadIdentity
from mc_common.identity.ca import TrustDomainCA
from mc_common.manifest import DevContext, ServiceManifest, load_services
from mc_common.testing import infra

DEV_TRUST_DOMAIN = "mc.dev"
DEV_NAMESPACE = "mc"
CLI_CALLER = "maestro-cli"
# The callers the dev fleet believes: the gateway (as in production) and the CLI.
DEV_CALLERS = ("gateway", CLI_CALLER)
# ... and, for tenants only, fleet services that call others for a tenant (edge-policy reads
# the limiter's usage for the tenant it evaluates).
DEV_TENANT_CALLERS = (*DEV_CALLERS, "edge-policy")
IDENTITY_PREFIX = "MC_IDENTITY_"


class FleetError(RuntimeError):
    """The fleet cannot start; the message is one line saying what to fix."""


def select_services(only: tuple[str, ...] = ()) -> tuple[ServiceManifest, ...]:
    """The declared services, or those named in `only` (an unknown name is an error)."""
    services = load_services()
    names = [m.name for m in services]
    if unknown := sorted(set(only) - set(names)):
        raise FleetError(f"unknown service {', '.join(unknown)}; services: {', '.join(names)}")
    return tuple(m for m in services if not only or m.name in only)


@dataclass
class RunningService:
    """A started child process and its endpoints."""

    definition: ServiceManifest
    process: subprocess.Popen[bytes]
    grpc_port: int
    metrics_port: int
    log_path: Path
    log_file: IO[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@dataclass
class Fleet:
    """Supervises the backing infrastructure and the service processes."""

    data_dir: Path
    only: tuple[str, ...] = ()
    broker: infra.TansuBroker | None = None
    infra: DevContext | None = None
    services: list[RunningService] = field(default_factory=list)
    selected: tuple[ServiceManifest, ...] = ()

    def start_infra(self) -> DevContext:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        admin_dsn = os.environ.get("MC_POSTGRES_DSN") or infra.postgres_dsn()
        dsn = _ensure_database(admin_dsn, os.environ.get("MC_DEV_DATABASE", "mc_dev"))
        redis = os.environ.get("MC_REDIS_URL") or infra.redis_url()
        kafka = os.environ.get("MC_KAFKA_BOOTSTRAP")
        if not kafka:
            self.broker = infra.start_tansu()
            kafka = self.broker.bootstrap_servers
        self.infra = DevContext(dsn, redis, kafka, self.data_dir)
        return self.infra

    def start_services(self) -> None:
        assert self.infra is not None
        plaintext = os.environ.get("MC_IDENTITY_MODE") == "plaintext-dev"
        ca = None if plaintext else issue_dev_svids(self.data_dir, [*DEV_CALLERS])
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(IDENTITY_PREFIX)}
        for definition in self.selected or select_services(self.only):
            grpc_port = _port_or_free(definition.grpc_port)
            metrics_port = _port_or_free(definition.metrics_port)
            env = {
                **inherited,
                **definition.env(self.infra, grpc_port, metrics_port),
                **identity_env(self.data_dir, definition.name, ca),
            }
            log_path = self.data_dir / f"{definition.name}.log"
            log_file = log_path.open("ab")
            process = subprocess.Popen(
                [sys.executable, "-m", definition.module],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            self.services.append(
                RunningService(definition, process, grpc_port, metrics_port, log_path, log_file)
            )

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Block until every service reports SERVING; raise with its log tail if one dies."""
        deadline = time.monotonic() + timeout
        identity = dev_identity(self.data_dir)
        for service in self.services:
            name = service.definition.name
            with identity.sync_channel(service.address, server=name) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while True:
                    if service.process.poll() is not None:
                        raise RuntimeError(
                            f"{service.definition.name} exited:\n{_tail(service.log_path)}"
                        )
                    with contextlib.suppress(grpc.RpcError):
                        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{service.definition.name} not healthy in {timeout}s:\n"
                            f"{_tail(service.log_path)}"
                        )
                    time.sleep(0.1)

    def endpoints(self) -> list[tuple[str, str, str]]:
        assert self.infra is not None
        rows = [
            ("postgres", _redact(self.infra.postgres_dsn), ""),
            ("redis", self.infra.redis_url, ""),
            ("kafka", self.infra.kafka_bootstrap, ""),
        ]
        rows += [
            (
                s.definition.name,
                f"grpc://{s.address}",
                f"http://127.0.0.1:{s.metrics_port}/metrics  log: {s.log_path}",
            )
            for s in self.services
        ]
        return rows

    def stop(self) -> None:
        (self.data_dir / "endpoints.json").unlink(missing_ok=True)
        for service in reversed(self.services):
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in reversed(self.services):
            try:
                service.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
            service.log_file.close()
        self.services.clear()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    @contextlib.contextmanager
    def running(self) -> Iterator[Fleet]:
        self.selected = select_services(self.only)  # an unknown name fails before anything starts
        try:
            self.start_infra()
            self.start_services()
            self.wait_healthy()
            write_endpoints(self.data_dir / "endpoints.json", self)
            yield self
        finally:
            self.stop()


def issue_dev_svids(data_dir: Path, callers: list[str]) -> TrustDomainCA:
    """The dev trust domain's CA (made once) and fresh SVIDs for the clients in `callers`."""
    ca = TrustDomainCA.load_or_create(data_dir / "identity" / "ca", DEV_TRUST_DOMAIN)
    for caller in callers:
        ca.write_svid(data_dir / "identity" / caller, caller, namespace=DEV_NAMESPACE)
    return ca


def identity_env(data_dir: Path, service: str, ca: TrustDomainCA | None) -> dict[str, str]:
    """`MC_IDENTITY_*` of a dev fleet service: a fresh SVID from `ca`, or plaintext-dev."""
    if ca is None:
        return {"MC_IDENTITY_MODE": "plaintext-dev", "MC_IDENTITY_PLAINTEXT_PEER": "gateway"}
    svid_dir = data_dir / "identity" / service
    ca.write_svid(svid_dir, service, namespace=DEV_NAMESPACE)
    return {
        "MC_IDENTITY_MODE": "mtls",
        "MC_IDENTITY_TRUST_DOMAIN": DEV_TRUST_DOMAIN,
        "MC_IDENTITY_NAMESPACE": DEV_NAMESPACE,
        "MC_IDENTITY_SVID_DIR": str(svid_dir),
        "MC_IDENTITY_TENANT_CALLERS": ",".join(DEV_TENANT_CALLERS),
        "MC_IDENTITY_OPERATOR_CALLERS": ",".join(DEV_CALLERS),
        "MC_IDENTITY_FRONT_DOOR": "gateway",
    }


def dev_identity(data_dir: Path, caller: str = CLI_CALLER) -> WorkloadIdentity:
    """The identity a client calls the dev fleet with: `caller`'s SVID under `data_dir`
    (plaintext when MC_IDENTITY_MODE=plaintext-dev)."""
    if os.environ.get("MC_IDENTITY_MODE") == "plaintext-dev":
        return WorkloadIdentity(IdentitySettings(mode="plaintext-dev"), None)
    settings = IdentitySettings(
        mode="mtls",
        trust_domain=DEV_TRUST_DOMAIN,
        namespace=DEV_NAMESPACE,
        svid_dir=data_dir / "identity" / caller,
    )
    return WorkloadIdentity.from_settings(settings)


def client_identity(data_dir: Path) -> WorkloadIdentity:
    """Whose SVID the CLI calls with: the one MC_IDENTITY_* names (SVID files, or
    plaintext-dev mode), else the dev fleet's `maestro-cli` SVID under `data_dir`."""
    configured = ("MC_IDENTITY_SVID_DIR", "MC_IDENTITY_CERT_FILE", "MC_IDENTITY_MODE")
    if any(os.environ.get(name) for name in configured):
        return WorkloadIdentity.from_settings(IdentitySettings())
    return dev_identity(data_dir)


def _port_or_free(preferred: int) -> int:
    """`preferred` when nothing listens there, so CLI defaults work; any free port otherwise."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            return infra.free_port()
    return preferred


def write_endpoints(path: Path, fleet: Fleet) -> None:
    """Record service addresses for other `maestro` commands (removed when the fleet stops)."""
    import json

    path.write_text(json.dumps({s.definition.name: s.address for s in fleet.services}))


def read_endpoint(data_dir: Path, service: str) -> str | None:
    import json

    try:
        return str(json.loads((data_dir / "endpoints.json").read_text())[service])
    except (OSError, ValueError, KeyError):
        return None


def _ensure_database(admin_dsn: str, name: str) -> str:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return infra.database_dsn(admin_dsn, name)


def _redact(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    parts = conninfo_to_dict(dsn)
    if parts.get("password"):
        parts["password"] = "***"
    return make_conninfo("", **parts)  # type: ignore[arg-type]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
