"""Benchmark: inclusion and consistency proofs of one tenant's receipt log at 1M receipts.

Builds a log of N receipts for one tenant directly in Postgres (the Merkle nodes computed here
as the chain writer computes them, then COPY; receipt rows are minimal and the query
projection triggers are skipped, as the database owner may), then times, in one process over
one pool: GetReceipt's primary-key read (the baseline), inclusion proofs of random receipts
in the current tree, consistency proofs between random sizes, and a checkpoint. Target: p99 of
an inclusion proof <= 5 ms at 1M receipts.

Usage: uv run python bench/pql_proofs.py [--receipts 1000000] [--samples 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).parent))
from common import percentile

from mc_common.db import create_pool, migrate
from mc_common.receipts.merkle import completed_nodes, extend_frontier, leaf_hash, verify_inclusion
from mc_common.receipts.note import NoteSigner
from mc_common.signing import PemSigner
from mc_common.testing import infra
from mc_pql.log import CheckpointSigner, ReceiptLog
from mc_pql.log_store import LogStore
from mc_pql.provenance import Provenance
from mc_pql.store import ProvenanceStore

TENANT = "bench-big"


def digest_of(i: int) -> str:
    return hashlib.sha256(i.to_bytes(8, "big")).hexdigest()


async def build(pool: object, n: int) -> float:
    """COPY n receipts and their log rows; returns the seconds it took."""
    started = time.perf_counter()
    frontier: list[bytes] = []
    async with pool.connection() as conn:  # type: ignore[attr-defined]
        await conn.execute("SET session_replication_role = replica")  # skip the projection
        async with conn.cursor() as cur:
            async with cur.copy(
                "COPY receipt_log (tenant, sequence, digest, nodes) FROM STDIN"
            ) as copy:
                for i in range(n):
                    digest = digest_of(i)
                    leaf = leaf_hash(bytes.fromhex(digest))
                    nodes = b"".join(completed_nodes(i, leaf, frontier))
                    frontier = extend_frontier(i, frontier, leaf)
                    await copy.write_row((TENANT, i + 1, digest, nodes))
            async with cur.copy(
                "COPY receipts (tenant, sequence, digest, previous_digest, execution_id, "
                "envelope, signer_key_id) FROM STDIN"
            ) as copy:
                previous = ""
                for i in range(n):
                    digest = digest_of(i)
                    await copy.write_row((TENANT, i + 1, digest, previous, "x", b"{}", "k"))
                    previous = digest
        await conn.commit()
        await conn.execute("ANALYZE receipt_log")
        await conn.execute("ANALYZE receipts")
    return time.perf_counter() - started


CPU_MS: dict[int, float] = {}


async def timed(samples: int, call: object) -> list[float]:
    """Wall-clock latency of each call; this process's CPU per call is kept in CPU_MS."""
    out = []
    cpu = time.process_time()
    for i in range(samples):
        started = time.perf_counter()
        await call(i)  # type: ignore[operator]
        out.append((time.perf_counter() - started) * 1000)
    CPU_MS[id(out)] = (time.process_time() - cpu) * 1000 / samples
    return out


def line(name: str, latencies: list[float], baseline: list[float] | None = None) -> str:
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    ratio = ""
    if baseline is not None:
        ratio = f"  (p99 = {p99 / percentile(baseline, 0.99):.1f}x baseline)"
    cpu = CPU_MS.get(id(latencies), float("nan"))
    return f"  {name:38s} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  client CPU {cpu:.2f} ms{ratio}"


async def run(n: int, samples: int) -> None:
    admin = infra.postgres_dsn()
    db = infra.unique_name("mc_bench_proofs")
    dsn = infra.create_database(admin, db)
    pool = await create_pool(dsn, 1, 2, schema="pql", name="bench")
    try:
        await migrate(pool, "mc_pql.migrations", schema="pql")
        build_s = await build(pool, n)
        store, log_store = ProvenanceStore(pool), LogStore(pool)
        provenance = Provenance(store, PemSigner.generate())
        signer = CheckpointSigner(NoteSigner("bench.test/pql", Ed25519PrivateKey.generate()))
        log = ReceiptLog(log_store, signer, provenance)
        checkpoint = await log.checkpoint(TENANT)
        assert checkpoint.size == n
        rng = random.Random(7)
        picks = [rng.randrange(n) for _ in range(samples)]
        sizes = [sorted((rng.randrange(1, n), rng.randrange(1, n + 1))) for _ in range(samples)]

        async def get_receipt(i: int) -> None:
            await store.get_receipt(TENANT, digest_of(picks[i]))

        async def inclusion(i: int) -> None:
            proof = await log.inclusion(TENANT, digest_of(picks[i]), n)
            if i % 100 == 0:  # proofs are right, not only fast
                leaf = leaf_hash(bytes.fromhex(digest_of(picks[i])))
                verify_inclusion(picks[i], n, leaf, proof.hashes, checkpoint.root)

        async def consistency(i: int) -> None:
            old, new = sizes[i]
            await log.consistency(TENANT, old, new)

        async def fresh_checkpoint(i: int) -> None:
            await log.checkpoint(TENANT)

        await timed(200, get_receipt)  # warm the caches
        base = await timed(samples, get_receipt)
        incl = await timed(samples, inclusion)
        cons = await timed(samples, consistency)
        cps = await timed(min(samples, 500), fresh_checkpoint)
    finally:
        await pool.close()
        infra.drop_database(admin, db)
    print(f"pql log proofs at {n:,} receipts of one tenant ({samples} samples each, one client)")
    print(f"  built with COPY in {build_s:.1f} s; load average {os.getloadavg()[0]:.2f}")
    print(line("baseline: GetReceipt's primary-key read", base))
    print(line("inclusion proof, current tree", incl, base) + "  (target p99 <= 5 ms)")
    print(line("consistency proof, random sizes", cons, base))
    print(line("latest checkpoint (stored, on demand)", cps, base))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receipts", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(run(args.receipts, args.samples))


if __name__ == "__main__":
    main()
