"""Benchmark: what mTLS costs the limiter's unary Check, against plaintext, in one run.

Starts two real `mc-limiter` processes on the same Redis: one serving mTLS with an SVID from a
throwaway CA (clients call as the gateway, the server checks the peer's SPIFFE ID on every
call), one in plaintext-dev mode. Connections are reused (one channel each, as services and
the gateway keep them), so the handshake is paid once and what is measured is record
encryption plus the per-call peer check. Rounds alternate plaintext / mTLS so machine noise
hits both sides of each round's ratio alike. Target: mTLS throughput >= 85% of plaintext.

Usage: uv run python bench/limiter_mtls.py [--seconds 6] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).parent))

from common import Child, Throughput, closed_loop, free_port, start_child

from mc.limiter.v1 import limiter_pb2 as pb
from mc.limiter.v1 import limiter_service_pb2 as svc
from mc.limiter.v1 import limiter_service_pb2_grpc as svc_grpc
from mc_common.identity import IdentitySettings, WorkloadIdentity
from mc_common.identity.ca import TrustDomainCA
from mc_common.testing import infra

TRUST_DOMAIN = "mc.bench"
OPERATOR = (("x-mc-principal", "operator:bench"),)
TENANTS = [f"bench-{i}" for i in range(50)]
CONCURRENCY = 32


async def start_limiter(work: Path, name: str, identity_env: dict[str, str], **kw: object) -> Child:
    port = free_port()
    prefix = f"mc-bench:{uuid.uuid4().hex[:8]}"
    env = {
        "MC_LIMITER_REDIS_URLS": infra.redis_url(),
        "MC_LIMITER_KEY_PREFIX": f"{prefix}:rl",
        "MC_LIMITER_FAIRSHARE_KEY_PREFIX": f"{prefix}:fs",
        "MC_LIMITER_GRPC_PORT": str(port),
        "MC_LIMITER_LOG_LEVEL": "WARNING",
        **identity_env,
    }
    args = [sys.executable, "-m", "mc_limiter.main"]
    return await start_child(args, env, port, work / f"{name}.log", **kw)  # type: ignore[arg-type]


async def prepare(channel: grpc.aio.Channel) -> svc_grpc.LimiterServiceStub:
    stub = svc_grpc.LimiterServiceStub(channel)
    limits = [
        pb.Limit(name="s", algorithm=pb.ALGORITHM_TOKEN_BUCKET, limit=1_000_000_000, window_ms=1000)
    ]
    rule = pb.Rule(id="bench", scope=pb.RULE_SCOPE_TENANT, key="bench:*", limits=limits)
    await stub.PutRule(svc.PutRuleRequest(rule=rule), metadata=OPERATOR)
    return stub


def checker(stub: svc_grpc.LimiterServiceStub):  # type: ignore[no-untyped-def]
    requests = [
        (svc.CheckRequest(tenant=t, key="bench:k", cost=1), (("x-mc-tenant", t),)) for t in TENANTS
    ]

    async def check_one(i: int) -> int:
        request, metadata = requests[i % len(requests)]
        await stub.Check(request, metadata=metadata)
        return 1

    return check_one


async def run(seconds: float, rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="mc-bench-mtls-"))
    ca = TrustDomainCA.generate(TRUST_DOMAIN)
    for service in ("limiter", "gateway"):
        ca.write_svid(work / service, service)
    gateway = WorkloadIdentity.from_settings(
        IdentitySettings(mode="mtls", trust_domain=TRUST_DOMAIN, svid_dir=work / "gateway")
    )
    mtls_env = {
        "MC_IDENTITY_MODE": "mtls",
        "MC_IDENTITY_TRUST_DOMAIN": TRUST_DOMAIN,
        "MC_IDENTITY_SVID_DIR": str(work / "limiter"),
    }
    secure = await start_limiter(work, "mtls", mtls_env, identity=gateway, server="limiter")
    plain = await start_limiter(work, "plaintext", {"MC_IDENTITY_MODE": "plaintext-dev"})
    results: list[tuple[Throughput, Throughput]] = []
    try:
        async with (
            gateway.channel(secure.address, server="limiter") as mtls_channel,
            grpc.aio.insecure_channel(plain.address) as plain_channel,
        ):
            mtls_check = checker(await prepare(mtls_channel))
            plain_check = checker(await prepare(plain_channel))
            for _ in range(rounds):
                p = await closed_loop(
                    plain_check, CONCURRENCY, seconds / 2, warmup=0.5, server_cpu=plain.cpu_seconds
                )
                m = await closed_loop(
                    mtls_check, CONCURRENCY, seconds / 2, warmup=0.5, server_cpu=secure.cpu_seconds
                )
                results.append((p, m))
    finally:
        secure.stop()
        plain.stop()

    print(f"limiter Check: mTLS vs plaintext ({rounds} alternating rounds of {seconds / 2:.1f} s, "
          f"c={CONCURRENCY}, one reused connection each, 2-core machine)")  # fmt: skip
    for i, (p, m) in enumerate(results, 1):
        print(f"  round {i}: plaintext {p.calls_per_s:8,.0f}/s  mTLS {m.calls_per_s:8,.0f}/s  "
              f"= {m.calls_per_s / p.calls_per_s:.0%}")  # fmt: skip
    ratio = statistics.median(m.calls_per_s / p.calls_per_s for p, m in results)
    totals: dict[str, Throughput] = {}
    for label, pick in (("plaintext", 0), ("mTLS", 1)):
        runs = [r[pick] for r in results]
        merged = Throughput(
            sum(r.calls for r in runs),
            sum(r.items for r in runs),
            sum(r.seconds for r in runs),
            [x for r in runs for x in r.latencies_ms],
            sum(r.server_cpu_s for r in runs),
            sum(r.client_cpu_s for r in runs),
        )
        print(f"  {label:9s} {merged.summary()}  {merged.cpu_summary()}")
        totals[label] = merged
    # CPU per call hardly moves with other load on the machine, unlike the rates.
    server_cost = _cpu_per_call(totals["mTLS"], 0) / _cpu_per_call(totals["plaintext"], 0)
    client_cost = _cpu_per_call(totals["mTLS"], 1) / _cpu_per_call(totals["plaintext"], 1)
    print(f"  CPU per call, mTLS/plaintext: server {server_cost:.1%}, client {client_cost:.1%}")
    print(f"  median mTLS/plaintext throughput {ratio:.0%}: cost {1 - ratio:.0%} (target <= 15%)")


def _cpu_per_call(result: Throughput, side: int) -> float:
    cpu = result.server_cpu_s if side == 0 else result.client_cpu_s
    return cpu / max(result.calls, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.rounds))


if __name__ == "__main__":
    main()
