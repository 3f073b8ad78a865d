"""The local fleet: the declared services, their infrastructure, and the supervisor running them.

`maestro dev up` resolves Postgres and Redis (a configured server, else the machine's, else an
embedded one; `--embedded` forces embedded ones), starts a Tansu Kafka broker (unless one is
configured), starts every declared service (`mc_common.manifest`) as a child process with its
settings in the environment, waits until all report SERVING, writes `endpoints.json`, and on
Ctrl-C stops the services within the grace period, then the broker and embedded servers.

Every child runs in its own session (a terminal's Ctrl-C reaches only `maestro`, which stops
them in order) and dies with `maestro` if it is killed (`PR_SET_PDEATHSIG`); `endpoints.json`
names `maestro`'s pid, so a file left by a killed fleet is recognised as stale.

Identity: the fleet is a trust domain of its own, `mc.dev`. Its CA lives in
`<data-dir>/identity/ca` (made on first use, kept across runs); each `dev up` issues fresh
SVIDs to every service and to the CLI (`maestro-cli`) and gateway clients, so services serve
mTLS exactly as in production, and the CLI calls them with its SVID. The dev fleet allows
`maestro-cli` beside the gateway to assert tenants and operators (production allows only the
gateway). `MC_IDENTITY_MODE=plaintext-dev` runs everything in plaintext on loopback instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mc_common import devinfra
from mc_common.identity import IdentitySettings, WorkloadIdentity
from mc_common.identity.ca import TrustDomainCA
from mc_common.manifest import DevContext, Infra, ServiceManifest, load_services

ENDPOINTS = "endpoints.json"
PID_KEY = "maestro_pid"  # never a service name: those have no underscore
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


class Interrupted(FleetError):
    """Ctrl-C (or SIGTERM) arrived while the fleet was starting."""


def select_services(only: tuple[str, ...] = ()) -> tuple[ServiceManifest, ...]:
    """The declared services, or those named in `only` (an unknown name is an error)."""
    services = load_services()
    names = [m.name for m in services]
    if unknown := sorted(set(only) - set(names)):
        raise FleetError(f"unknown service {', '.join(unknown)}; services: {', '.join(names)}")
    return tuple(m for m in services if not only or m.name in only)


class StopFlag:
    """Set by Ctrl-C: a plain attribute, since a signal handler that takes a lock (as
    `threading.Event.set` does) deadlocks when the signal lands while the main thread holds it."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until set or `timeout` s have passed; whether it is set."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._set:
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                return False
            time.sleep(left)
        return True


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
    embedded: bool = False
    stop_grace_s: float = 10.0
    any_ports: bool = False
    stopping: StopFlag = field(default_factory=StopFlag)
    announce: Callable[[str], None] = field(default=lambda line: None)
    infra: DevContext | None = None
    services: list[RunningService] = field(default_factory=list)
    selected: tuple[ServiceManifest, ...] = ()
    killed: list[str] = field(default_factory=list)
    _stoppers: list[Callable[[], None]] = field(default_factory=list)

    # --- infrastructure ----------------------------------------------------------------------

    def start_infra(self, needs: frozenset[Infra]) -> DevContext:
        """Resolve or start what `needs` names; the rest is left empty."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        dsn = redis = kafka = ""
        if Infra.POSTGRES in needs:
            admin = self._postgres()
            dsn = devinfra.ensure_database(admin, os.environ.get("MC_DEV_DATABASE", "mc_dev"))
        if Infra.REDIS in needs:
            redis = self._redis()
        if Infra.KAFKA in needs:
            kafka = self._kafka()
        self.infra = DevContext(dsn, redis, kafka, self.data_dir)
        return self.infra

    def _postgres(self) -> str:
        if not self.embedded:
            if configured := _configured("MC_POSTGRES_DSN", devinfra.postgres_reachable):
                return configured
            if machine := devinfra.machine_postgres_dsn():
                return machine
        self.announce("starting embedded Postgres")
        server = devinfra.EmbeddedPostgres.start()
        self._stoppers.append(server.stop)
        return server.dsn

    def _redis(self) -> str:
        if not self.embedded:
            if configured := _configured("MC_REDIS_URL", devinfra.redis_url_reachable):
                return configured
            if devinfra.redis_reachable():
                return devinfra.LOCAL_REDIS_URL
        self.announce("starting embedded Redis")
        server = devinfra.EmbeddedRedis.start()
        self._stoppers.append(server.stop)
        return server.url

    def _kafka(self) -> str:
        if configured := _configured("MC_KAFKA_BOOTSTRAP", devinfra.kafka_reachable):
            return configured
        broker = devinfra.start_tansu()
        self._stoppers.append(broker.stop)
        return broker.bootstrap_servers

    # --- services ----------------------------------------------------------------------------

    def start_services(self) -> None:
        assert self.infra is not None
        plaintext = os.environ.get("MC_IDENTITY_MODE") == "plaintext-dev"
        ca = None if plaintext else issue_dev_svids(self.data_dir, [*DEV_CALLERS])
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(IDENTITY_PREFIX)}
        for definition in self.selected or select_services(self.only):
            self._check_not_stopping()
            grpc_port = self._port(definition.grpc_port)
            metrics_port = self._port(definition.metrics_port)
            env = {
                **inherited,
                **definition.env(self.infra, grpc_port, metrics_port),
                **identity_env(self.data_dir, definition.name, ca),
            }
            log_path = self.data_dir / f"{definition.name}.log"
            log_file = log_path.open("ab")  # stderr: the JSON log stream, nothing else
            out_file = (self.data_dir / f"{definition.name}.out").open("ab")
            process = subprocess.Popen(
                [sys.executable, "-m", definition.module],
                env=env,
                stdout=out_file,  # what is not a log (a console span exporter) stays apart
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches maestro only; it stops them in order
                preexec_fn=devinfra.die_with_parent(signal.SIGTERM),
            )
            out_file.close()  # the child holds its own descriptor
            self.services.append(
                RunningService(definition, process, grpc_port, metrics_port, log_path, log_file)
            )
            self.announce(f"starting {definition.name} (pid {process.pid})")

    def _port(self, preferred: int) -> int:
        """The declared port when free (so CLI defaults work), else any free port."""
        if not self.any_ports and devinfra.port_is_free(preferred):
            return preferred
        return devinfra.free_port()

    def wait_healthy(self, timeout: float = 300.0) -> None:
        """Block until every service reports SERVING; raise with its log tail if one dies."""
        deadline = time.monotonic() + timeout
        identity = dev_identity(self.data_dir)
        for service in self.services:
            name = service.definition.name
            with identity.sync_channel(service.address, server=name) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while True:
                    self._check_not_stopping()
                    if service.process.poll() is not None:
                        raise FleetError(
                            f"{name} exited with {service.process.returncode} before serving; "
                            f"its log ({service.log_path}) ends:\n{_tail(service.log_path)}"
                        )
                    with contextlib.suppress(grpc.RpcError):
                        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    if time.monotonic() > deadline:
                        raise FleetError(
                            f"{name} not SERVING within {timeout:.0f}s; its log "
                            f"({service.log_path}) ends:\n{_tail(service.log_path)}"
                        )
                    self.stopping.wait(0.1)

    def _check_not_stopping(self) -> None:
        if self.stopping.is_set():
            raise Interrupted("interrupted while starting")

    def endpoints(self) -> list[tuple[str, str, str]]:
        assert self.infra is not None
        rows = [
            (name, value, "")
            for name, value in (
                ("postgres", devinfra.redact(self.infra.postgres_dsn)),
                ("redis", self.infra.redis_url),
                ("kafka", self.infra.kafka_bootstrap),
            )
            if value and value != "(unparsable DSN)"
        ]
        rows += [
            (
                s.definition.name,
                f"grpc://{s.address}",
                f"http://127.0.0.1:{s.metrics_port}/metrics  pid {s.process.pid}  "
                f"log: {s.log_path}",
            )
            for s in self.services
        ]
        return rows

    # --- stopping ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every service (SIGTERM, then SIGKILL after the grace), then the infrastructure."""
        (self.data_dir / ENDPOINTS).unlink(missing_ok=True)
        for service in self.services:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        for service in self.services:
            try:
                service.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
                self.killed.append(service.definition.name)
                self.announce(
                    f"{service.definition.name} killed: not stopped within "
                    f"{self.stop_grace_s:g}s (see {service.log_path})"
                )
            else:
                self.announce(f"{service.definition.name} stopped")
            service.log_file.close()
        self.services.clear()
        while self._stoppers:
            self._stoppers.pop()()

    @contextlib.contextmanager
    def running(self) -> Iterator[Fleet]:
        self.selected = select_services(self.only)  # an unknown name fails before anything starts
        claim_data_dir(self.data_dir)
        try:
            self.start_infra(frozenset().union(*(m.needs for m in self.selected)))
            self.start_services()
            self.wait_healthy()
            write_endpoints(self.data_dir / ENDPOINTS, self)
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


def _configured(variable: str, reachable: Callable[[str], bool]) -> str | None:
    """The value of `variable` when set; one line naming it when its server is unreachable."""
    value = os.environ.get(variable)
    if not value:
        return None
    if not reachable(value):
        shown = devinfra.redact(value) if variable == "MC_POSTGRES_DSN" else value
        raise FleetError(
            f"{variable}={shown} is not reachable: start that server, unset {variable} "
            "to use the machine's or an embedded one, or pass --embedded"
        )
    return value


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_data_dir(data_dir: Path) -> None:
    """Refuse a data dir another live fleet uses; remove what a dead one left behind."""
    path = data_dir / ENDPOINTS
    try:
        owner = json.loads(path.read_text()).get(PID_KEY)
    except (OSError, ValueError, AttributeError):
        owner = None
    if owner != os.getpid() and _pid_alive(owner):
        raise FleetError(f"a fleet (pid {owner}) already runs with data dir {data_dir}")
    path.unlink(missing_ok=True)


def write_endpoints(path: Path, fleet: Fleet) -> None:
    """Record service addresses for other `maestro` commands (removed when the fleet stops)."""
    entries: dict[str, object] = {s.definition.name: s.address for s in fleet.services}
    entries[PID_KEY] = os.getpid()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries))
    tmp.replace(path)


def read_endpoint(data_dir: Path, service: str) -> str | None:
    """The address of `service` in the running fleet of `data_dir`; None when no fleet runs
    there (a file left by a fleet that died is ignored)."""
    try:
        entries = json.loads((data_dir / ENDPOINTS).read_text())
        if not _pid_alive(entries.get(PID_KEY)):
            return None
        return str(entries[service])
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
