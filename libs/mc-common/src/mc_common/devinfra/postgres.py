"""Postgres for local runs: a configured or machine server, else an embedded one.

The embedded server runs the PostgreSQL binaries shipped in the `pgserver` wheel directly (not
through pgserver's API, which as root adds a system user and opens up directory permissions up
to `/`). It lives in its own temporary directory, listens on a free 127.0.0.1 port with trust
authentication, and dies with the process that started it. Postgres refuses to run as root, so
as root it runs as an existing unprivileged user (`$MC_EMBEDDED_PG_USER`, default `nobody`),
and only its own directory is handed to that user.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from mc_common.devinfra.process import InfraError, die_with_parent, free_port, stop_process

LOCAL_POSTGRES_DSNS: Final = (
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://127.0.0.1:5432/postgres",
)

_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def postgres_reachable(dsn: str, timeout: float = 2.0) -> bool:
    """Whether a connection to `dsn` can be opened and runs `SELECT 1`."""
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, int(timeout)), autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def machine_postgres_dsn() -> str | None:
    """The DSN of the machine's server on 127.0.0.1:5432, when one answers."""
    for dsn in LOCAL_POSTGRES_DSNS:
        if postgres_reachable(dsn):
            return dsn
    return None


def postgres_binaries() -> Path:
    """The directory of the PostgreSQL binaries shipped in the pgserver wheel."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns about a missing XDG_RUNTIME_DIR on import in containers.
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError as err:
        raise InfraError(
            "no Postgres configured or on 127.0.0.1:5432, and the pgserver package (embedded "
            "Postgres) is not installed"
        ) from err
    return Path(POSTGRES_BIN_PATH)


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user the server runs as: None (this one) unless we are root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("MC_EMBEDDED_PG_USER", "nobody")
    try:
        return pwd.getpwnam(name)
    except KeyError as err:
        raise InfraError(
            f"embedded Postgres cannot run as root and user {name!r} does not exist; "
            "set MC_EMBEDDED_PG_USER to an existing unprivileged user"
        ) from err


def _check_reachable_by_others(path: Path, user: str) -> None:
    """Refuse, rather than loosen permissions, when `user` cannot reach the binaries."""
    for part in (path, *path.parents):
        mode = part.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise InfraError(
                f"embedded Postgres runs as {user!r}, which cannot traverse {part}; "
                "set MC_POSTGRES_DSN to a server, or make that directory traversable yourself"
            )


def _as_user(user: pwd.struct_passwd | None) -> None:
    if user is not None:
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)


@dataclass
class EmbeddedPostgres:
    """A throw-away Postgres server; `stop()` ends it and deletes its directory."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes]
    _stopped: bool = field(default=False, repr=False)

    @property
    def dsn(self) -> str:
        """Admin DSN (user `postgres`, trust authentication)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @classmethod
    def start(cls, startup_timeout: float = 60.0) -> EmbeddedPostgres:
        """Initialise a cluster in a new temporary directory and start it.

        Raises:
            InfraError: the binaries are missing or unreachable, or the server did not start.
        """
        binaries = postgres_binaries()
        user = _unprivileged_user()
        directory = Path(tempfile.mkdtemp(prefix="mc-postgres-"))
        data = directory / "data"
        if user is not None:
            _check_reachable_by_others(binaries, user.pw_name)
            os.chown(directory, user.pw_uid, user.pw_gid)  # only our own directory
        run_as = die_with_parent(signal.SIGINT, then=lambda: _as_user(user))
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "TZ": "UTC"}
        try:
            subprocess.run(
                [
                    *(str(binaries / "initdb"), "-D", str(data), "-U", "postgres"),
                    *("--auth=trust", "--encoding=UTF8", "--no-sync"),
                ],
                preexec_fn=run_as,
                env=env,
                cwd=directory,
                capture_output=True,
                check=True,
                timeout=startup_timeout,
            )
        except subprocess.CalledProcessError as err:
            shutil.rmtree(directory, ignore_errors=True)
            raise InfraError(f"initdb failed: {err.stderr.decode(errors='replace')}") from err
        for _ in range(3):  # another process may take the free port before the server binds
            port = free_port()
            log = (directory / "postgres.log").open("ab")
            process = subprocess.Popen(
                [
                    *(str(binaries / "postgres"), "-D", str(data), "-p", str(port)),
                    *("-h", "127.0.0.1", "-k", str(directory), "-c", "fsync=off"),
                ],
                preexec_fn=run_as,
                env=env,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
            server = cls(directory, port, process)
            deadline = time.monotonic() + startup_timeout
            while process.poll() is None and time.monotonic() < deadline:
                if postgres_reachable(server.dsn, timeout=1):
                    return server
                time.sleep(0.1)
            stop_process(process, signal.SIGQUIT, 5)
        tail = (directory / "postgres.log").read_text(errors="replace")[-2000:]
        shutil.rmtree(directory, ignore_errors=True)
        raise InfraError(f"embedded Postgres did not start:\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT), then delete the directory."""
        if self._stopped:
            return
        self._stopped = True
        stop_process(self.process, signal.SIGINT, timeout)
        shutil.rmtree(self.directory, ignore_errors=True)


def database_dsn(admin_dsn: str, name: str) -> str:
    """`admin_dsn` pointed at database `name` (same host, port, user and options)."""
    return make_conninfo(admin_dsn, dbname=name)


def create_database(admin_dsn: str, name: str) -> str:
    """Create database `name` (lower-case identifier) and return a DSN for it.

    Raises:
        ValueError: `name` is not a plain lower-case identifier.
        psycopg.Error: the database exists or the user may not create databases.
    """
    identifier = _database_identifier(name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(identifier))
    return database_dsn(admin_dsn, name)


def ensure_database(admin_dsn: str, name: str) -> str:
    """Database `name`, created unless it exists; returns its DSN."""
    identifier = _database_identifier(name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(identifier))
    return database_dsn(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database `name` if it exists, disconnecting its sessions first (`WITH (FORCE)`)."""
    identifier = _database_identifier(name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))


def _database_identifier(name: str) -> sql.Identifier:
    if not _DATABASE_NAME.fullmatch(name):
        raise ValueError(f"invalid database name {name!r}: use 1-63 characters of [a-z0-9_]")
    return sql.Identifier(name)


def redact(dsn: str) -> str:
    """`dsn` with its password (if any) replaced by `***`, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    from psycopg.conninfo import conninfo_to_dict

    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.password is None:
            return dsn
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    try:
        values = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparsable DSN)"
    if not values.get("password"):
        return dsn
    values["password"] = "***"
    return make_conninfo("", **values)  # type: ignore[arg-type]
