"""Benchmark: a REST call through the gateway vs the same RPC called directly over gRPC.

Starts a real `mc-limiter` and a real `mc-gateway` (its API key in Postgres) as child processes
in plaintext-dev mode (loopback; bench/limiter_mtls.py measures mTLS on its own). The RPC is
the limiter's `Check`, about the cheapest in the fleet, so the gateway's share of the cost is
as large as it gets. Through the gateway each call is authenticated with an API key (cached),
transcoded from JSON and back, and forwarded with its identity, deadline, request id and trace
context; rate limiting at the door is off here, since it would add a second Check per call.

Two measurements, alternating direct / gateway so machine noise hits both alike:
- closed loop (c=32): throughput; target gateway >= 50% of direct;
- open loop at 300 requests/s offered: p99 latency; target added p99 <= 3 ms.
The load generator runs in this process: gRPC through grpcio's C core, REST through a minimal
HTTP/1.1 keep-alive client on asyncio streams (one connection per concurrent caller). A full
client library (httpx) spent ~4 ms of CPU per call here and measured itself rather than the
gateway. Its CPU per call is printed, since on a 2-core machine it competes with the servers.

Usage: uv run python bench/gateway_rest.py [--seconds 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).parent))

from common import Child, Throughput, closed_loop, free_port, paced_loop, percentile, start_child

from mc.gateway.v1 import api_key_service_pb2 as kpb
from mc.gateway.v1 import api_key_service_pb2_grpc as kgrpc
from mc.limiter.v1 import limiter_pb2 as pb
from mc.limiter.v1 import limiter_service_pb2 as svc
from mc.limiter.v1 import limiter_service_pb2_grpc as svc_grpc
from mc_common.testing import infra

OPERATOR = (("x-mc-principal", "operator:bench"),)
TENANT = "bench"
CONCURRENCY = 32
OFFERED = 300.0


async def start_limiter(work: Path) -> Child:
    port = free_port()
    prefix = f"mc-bench:{uuid.uuid4().hex[:8]}"
    env = {
        "MC_LIMITER_REDIS_URLS": infra.redis_url(),
        "MC_LIMITER_KEY_PREFIX": f"{prefix}:rl",
        "MC_LIMITER_FAIRSHARE_KEY_PREFIX": f"{prefix}:fs",
        "MC_LIMITER_GRPC_PORT": str(port),
        "MC_LIMITER_LOG_LEVEL": "WARNING",
    }
    return await start_child([sys.executable, "-m", "mc_limiter.main"], env, port, work / "l.log")


async def start_gateway(work: Path, limiter: str, dsn: str) -> tuple[Child, int]:
    port, http_port = free_port(), free_port()
    env = {
        "MC_GATEWAY_GRPC_PORT": str(port),
        "MC_GATEWAY_HTTP_PORT": str(http_port),
        "MC_GATEWAY_POSTGRES_DSN": dsn,
        "MC_GATEWAY_UPSTREAMS": json.dumps({"mc.limiter.v1": limiter}),
        "MC_GATEWAY_LOG_LEVEL": "WARNING",
    }
    child = await start_child([sys.executable, "-m", "mc_gateway.main"], env, port, work / "g.log")
    return child, http_port


async def prepare(limiter: grpc.aio.Channel, gateway: grpc.aio.Channel) -> str:
    limits = [
        pb.Limit(name="s", algorithm=pb.ALGORITHM_TOKEN_BUCKET, limit=1_000_000_000, window_ms=1000)
    ]
    rule = pb.Rule(id="bench", scope=pb.RULE_SCOPE_TENANT, key="bench:*", limits=limits)
    await svc_grpc.LimiterServiceStub(limiter).PutRule(
        svc.PutRuleRequest(rule=rule), metadata=OPERATOR
    )
    key = await kgrpc.ApiKeyServiceStub(gateway).CreateApiKey(
        kpb.CreateApiKeyRequest(parent=f"tenants/{TENANT}", principal="service:bench"),
        metadata=OPERATOR,
    )
    return key.secret


class RestClient:
    """Keep-alive HTTP/1.1 POSTs of one JSON body over a pool of raw connections."""

    def __init__(self, port: int, path: str, headers: dict[str, str], body: bytes) -> None:
        self._port = port
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self._request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def post(self) -> tuple[int, bytes]:
        while self._idle:
            try:
                return await self._exchange(*self._idle.pop())
            except (asyncio.IncompleteReadError, ConnectionError):
                continue  # the server closed an idle connection: take another
        reader, writer = await asyncio.open_connection("127.0.0.1", self._port)
        self._all.append(writer)
        return await self._exchange(reader, writer)

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, bytes]:
        writer.write(self._request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        self._idle.append((reader, writer))
        return status, body

    async def close(self) -> None:
        for writer in self._all:
            writer.close()


async def run(seconds: float, rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="mc-bench-gateway-"))
    admin = infra.postgres_dsn()
    db = infra.unique_name("mc_bench")
    dsn = infra.create_database(admin, db)
    limiter = await start_limiter(work)
    gateway, http_port = await start_gateway(work, limiter.address, dsn)
    closed: list[tuple[Throughput, Throughput]] = []
    paced: list[tuple[list[float], list[float]]] = []
    errors: dict[str, int] = {}
    try:
        async with (
            grpc.aio.insecure_channel(limiter.address) as direct,
            grpc.aio.insecure_channel(gateway.address) as admin_channel,
        ):
            secret = await prepare(direct, admin_channel)
            stub = svc_grpc.LimiterServiceStub(direct)
            request = svc.CheckRequest(tenant=TENANT, key="bench:k", cost=1)
            metadata = (("x-mc-tenant", TENANT), ("x-mc-principal", "service:bench"))
            body = json.dumps({"key": "bench:k", "cost": 1}).encode()
            headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
            http = RestClient(http_port, "/api/limits:check", headers, body)
            try:

                async def grpc_call(i: int) -> int:
                    reply = await stub.Check(request, metadata=metadata, timeout=10)
                    return int(reply.allowed)

                async def rest_call(i: int) -> int:
                    status, payload = await http.post()
                    if status != 200:
                        raise RuntimeError(f"HTTP {status}: {payload[:200]!r}")
                    return int(json.loads(payload)["allowed"])

                for _ in range(rounds):
                    d = await closed_loop(
                        grpc_call, CONCURRENCY, seconds / 2, 0.5, limiter.cpu_seconds
                    )
                    g = await closed_loop(
                        rest_call, CONCURRENCY, seconds / 2, 0.5, gateway.cpu_seconds
                    )
                    closed.append((d, g))
                    pd = await paced_loop(grpc_call, OFFERED, seconds / 2)
                    pg = await paced_loop(rest_call, OFFERED, seconds / 2)
                    for k, v in {**pd.errors, **pg.errors}.items():
                        errors[k] = errors.get(k, 0) + v
                    paced.append((pd.result.latencies_ms, pg.result.latencies_ms))
            finally:
                await http.close()
    finally:
        gateway.stop()
        limiter.stop()
        infra.drop_database(admin, db)

    print(f"limiter Check: REST through the gateway vs gRPC direct ({rounds} alternating rounds, "
          f"2-core machine shared with the servers)")  # fmt: skip
    for i, (d, g) in enumerate(closed, 1):
        print(f"  round {i}: direct {d.calls_per_s:7,.0f}/s  gateway {g.calls_per_s:7,.0f}/s  "
              f"= {g.calls_per_s / d.calls_per_s:.0%}")  # fmt: skip
    ratio = statistics.median(g.calls_per_s / d.calls_per_s for d, g in closed)
    for label, pick in (("direct", 0), ("gateway", 1)):
        runs = [r[pick] for r in closed]
        merged = Throughput(
            sum(r.calls for r in runs),
            sum(r.items for r in runs),
            sum(r.seconds for r in runs),
            [x for r in runs for x in r.latencies_ms],
            sum(r.server_cpu_s for r in runs),
            sum(r.client_cpu_s for r in runs),
        )
        print(
            f"  closed loop c={CONCURRENCY} {label:8s} {merged.summary()}  {merged.cpu_summary()}"
        )
    print(f"  median gateway/direct throughput {ratio:.0%} (target >= 50%)")
    direct_lat = [x for d, _ in paced for x in d]
    gateway_lat = [x for _, g in paced for x in g]
    p99_d, p99_g = percentile(direct_lat, 0.99), percentile(gateway_lat, 0.99)
    p50_d, p50_g = percentile(direct_lat, 0.5), percentile(gateway_lat, 0.5)
    print(f"  open loop {OFFERED:.0f}/s offered: direct p50 {p50_d:.2f} ms p99 {p99_d:.2f} ms; "
          f"gateway p50 {p50_g:.2f} ms p99 {p99_g:.2f} ms")  # fmt: skip
    print(f"  added p50 {p50_g - p50_d:.2f} ms, added p99 {p99_g - p99_d:.2f} ms (target <= 3 ms)"
          + (f"; failed calls {errors}" if errors else ""))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.rounds))


if __name__ == "__main__":
    main()
