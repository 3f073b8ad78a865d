"""Shared pieces of the benchmarks: child-process servers, a bare gRPC echo baseline, load loops.

Every benchmark runs its load from this process against servers in child processes, and
measures a bare gRPC echo server in the same run so figures are printed as ratios to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mc_common.identity import WorkloadIdentity


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by `pids` and their children (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        total += cpu_seconds([int(c) for c in children])
    return total


@dataclass
class Child:
    process: subprocess.Popen[bytes]
    address: str

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the server process and its worker processes."""
        return cpu_seconds([self.process.pid])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def start_child(
    args: list[str],
    env: dict[str, str],
    port: int,
    log: Path,
    *,
    identity: WorkloadIdentity | None = None,
    server: str = "",
) -> Child:
    """Start a gRPC server process and wait until it reports SERVING.

    Servers run in plaintext-dev mode (loopback) unless `env` or `identity` say otherwise, so
    the service benchmarks stay comparable with their history; `bench/limiter_mtls.py`
    measures what mTLS costs. With `identity` (a client's) the health check goes over mTLS.
    """
    out = log.open("wb")
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MC_IDENTITY_")}
    full_env = {**inherited, "MC_IDENTITY_MODE": "plaintext-dev", **env}
    process = subprocess.Popen(args, env=full_env, stdout=out, stderr=out)
    address = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.insecure_channel(address)
        if identity is None
        else identity.channel(address, server=server)
    )
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(log.read_text())
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return Child(process, address)
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"server did not start: {log.read_text()}")


async def start_echo(request_type: str, response_type: str, log: Path) -> Child:
    """A bare grpc.aio server that answers every call with a default response: the baseline."""
    port = free_port()
    args = [sys.executable, str(Path(__file__).with_name("echo_server.py")), str(port)]
    return await start_child(
        args, {"ECHO_REQUEST": request_type, "ECHO_RESPONSE": response_type}, port, log
    )


async def until_listening(port: int, count: int) -> None:
    """Wait (a minute at most) until `count` sockets listen on `port` (workers sharing it)."""
    for _ in range(600):
        if _listeners(port) >= count:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"fewer than {count} listeners on port {port}")


def _listeners(port: int) -> int:
    """Listening TCP sockets on `port`, from /proc/net/tcp{,6} (state 0A is LISTEN)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                count += state == "0A" and int(local.rsplit(":", 1)[1], 16) == port
    return count


class Channels:
    """`count` channels to `address`, each its own TCP connection (no shared subchannels)."""

    def __init__(self, address: str, count: int) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        self._channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(count)]

    async def __aenter__(self) -> list[grpc.aio.Channel]:
        return self._channels

    async def __aexit__(self, *exc: object) -> None:
        for channel in self._channels:
            await channel.close(None)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Throughput:
    calls: int
    items: int
    seconds: float
    latencies_ms: list[float]
    server_cpu_s: float = float("nan")
    client_cpu_s: float = float("nan")

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds

    def summary(self) -> str:
        return (
            f"{self.items_per_s:9.0f} items/s  {self.calls_per_s:8.0f} calls/s  "
            f"p50 {percentile(self.latencies_ms, 0.5):6.2f} ms  "
            f"p99 {percentile(self.latencies_ms, 0.99):6.2f} ms"
        )

    def cpu_summary(self) -> str:
        """CPU per item of the server and of the load generator: unlike rates, these hardly
        move when other work shares the machine."""
        items = max(self.items, 1)
        return (
            f"cpu/item: server {self.server_cpu_s / items * 1000:.3f} ms, "
            f"client {self.client_cpu_s / items * 1000:.3f} ms"
        )


class CpuMeter:
    """Samples server and client CPU time at the start and end of a measured window."""

    def __init__(self, server: Callable[[], float] | None) -> None:
        self._server = server
        self._start = (0.0, 0.0)

    def _sample(self) -> tuple[float, float]:
        return (self._server() if self._server else float("nan"), time.process_time())

    def start(self) -> None:
        self._start = self._sample()

    def stop(self, result: Throughput) -> Throughput:
        end = self._sample()
        result.server_cpu_s = end[0] - self._start[0]
        result.client_cpu_s = end[1] - self._start[1]
        return result


async def closed_loop(
    call: Callable[[int], Awaitable[int]],
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
    server_cpu: Callable[[], float] | None = None,
) -> Throughput:
    """`concurrency` workers call back to back for `seconds`; each call returns its item count.

    Items are counted by calls started after the warm-up; CPU (`server_cpu`, and this process)
    is sampled over the same window, so CPU per item is slightly overstated by the calls still
    in flight when it closes.
    """
    stop_at = time.perf_counter() + warmup + seconds
    measure_from = time.perf_counter() + warmup
    latencies: list[float] = []
    counts = [0, 0]
    seq = 0
    meter = CpuMeter(server_cpu)

    async def start_meter() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        meter.start()

    async def worker() -> None:
        nonlocal seq
        while (now := time.perf_counter()) < stop_at:
            seq += 1
            items = await call(seq)
            done = time.perf_counter()
            if now >= measure_from:
                latencies.append((done - now) * 1000)
                counts[0] += 1
                counts[1] += items

    await asyncio.gather(start_meter(), *(worker() for _ in range(concurrency)))
    return meter.stop(Throughput(counts[0], counts[1], seconds, latencies))


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


@dataclass
class Paced:
    """An open-loop run: the calls' throughput and latency (from their scheduled send
    times), plus how late this process started each send (its own lag, not the server's)."""

    result: Throughput
    offered_per_s: float
    send_lag_ms: list[float]
    errors: dict[str, int]  # failed calls by error (their latency is not counted)


async def paced_loop(
    call: Callable[[int], Awaitable[int]],
    rate: float,
    seconds: float,
    server_cpu: Callable[[], float] | None = None,
) -> Paced:
    """Send at a fixed offered `rate`; latency counts from each call's scheduled send time, so
    a server that falls behind is charged for the queueing it causes (no coordinated omission).
    One pacing task starts each call when it is due (a sleeping task per call made up front
    costs the load generator more than the calls), and the rate this process actually offered
    is reported: if the client cannot keep up, the output says so rather than charging the
    server for it."""
    interval = 1.0 / rate
    total = int(rate * seconds)
    latencies: list[float] = []
    lag: list[float] = []
    items = [0]
    errors: dict[str, int] = {}
    running: set[asyncio.Task[None]] = set()

    async def one(i: int, scheduled: float) -> None:
        try:
            done = await call(i)
        except Exception as exc:
            code = getattr(exc, "code", None)
            name = str(code() if callable(code) else type(exc).__name__)
            errors[name] = errors.get(name, 0) + 1
            return
        items[0] += done
        latencies.append((time.perf_counter() - scheduled) * 1000)

    meter = CpuMeter(server_cpu)
    meter.start()
    start = time.perf_counter() + 0.05
    sent = 0
    while sent < total:
        now = time.perf_counter()
        due = start + sent * interval
        if due > now:
            await asyncio.sleep(due - now)
            continue
        while sent < total and start + sent * interval <= now:
            scheduled = start + sent * interval
            lag.append((now - scheduled) * 1000)
            task = asyncio.create_task(one(sent, scheduled))
            running.add(task)
            task.add_done_callback(running.discard)
            sent += 1
    last_send = time.perf_counter()
    await asyncio.gather(*running)
    elapsed = time.perf_counter() - start
    result = meter.stop(Throughput(total, items[0], elapsed, latencies))
    return Paced(result, total / max(last_send - start, 1e-9), lag, errors)
