"""The chain writer against the real Postgres: replicas sharing a database keep one chain."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace

from pql_support import content

from mc_common.errors import InvalidArgument
from mc_common.signing import PemSigner
from mc_pql import convert
from mc_pql.app import PqlApp
from mc_pql.chain_writer import ChainWriter, PreparedReceipt
from mc_pql.provenance import ContentSubmission
from mc_pql.settings import PqlSettings


def submissions(tenant: str, start: int, count: int) -> list[ContentSubmission]:
    return [
        convert.content_to_submission(tenant, content(f"e{n}", n), "content")
        for n in range(start, start + count)
    ]


async def test_replicas_sharing_a_database_keep_one_chain(
    pql_app: PqlApp, pql_settings: PqlSettings
) -> None:
    other = await PqlApp.create(pql_settings)  # a second replica: its own pool and writer
    try:
        a, b = pql_app.provenance, other.provenance
        first = await a.record_receipts("acme", submissions("acme", 0, 3))
        second = await b.record_receipts("acme", submissions("acme", 3, 3))
        # `a` last saw the head it left at 3; it must sign again after `b`'s receipts.
        third = await a.record_receipts("acme", submissions("acme", 6, 3))
        rows = [s.row for s in (*first, *second, *third)]
        assert [r.sequence for r in rows] == list(range(1, 10))
        for before, after in itertools.pairwise(rows):
            assert after.previous_digest == before.digest
        # And racing, in small and large rounds alike.
        replicas = itertools.cycle((a, b))
        await asyncio.gather(
            *(
                next(replicas).record_receipts("acme", submissions("acme", 100 + i, 1))
                for i in range(20)
            ),
            a.record_receipts("acme", submissions("acme", 500, 60)),
            b.record_receipts("acme", submissions("acme", 600, 60)),
        )
        chain = await a.verify_chain("acme")
        assert chain.verification.valid, chain.verification.failures
        assert chain.receipts_checked == 9 + 20 + 120
    finally:
        await other.close()


async def test_append_waits_for_the_tenant_lock_and_sees_the_moved_head(
    pql_app: PqlApp,
) -> None:
    writer = ChainWriter(pql_app.store, PemSigner.generate())
    [sub] = submissions("acme", 0, 1)
    [stored] = await writer.append("acme", [PreparedReceipt(sub.body, None)])
    head = (stored.row.sequence, stored.row.digest)
    async with pql_app.pool.connection() as holder:
        # Another replica holds the tenant's lock and appends one receipt before committing.
        await holder.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('mc.pql.chain:' || %s, 0))", ("acme",)
        )
        async with pql_app.store.chain_appender() as appender:
            row = replace(stored.row, sequence=2, digest="cd" * 32, previous_digest=head[1])
            waiting = asyncio.create_task(appender.append({"acme": head}, [row]))
            await _until_waiting_on_a_lock(pql_app)
            assert not waiting.done()
            await holder.execute(
                "INSERT INTO receipts (tenant, sequence, digest, previous_digest, execution_id, "
                "envelope, signer_key_id) VALUES ('acme', 2, %s, %s, 'x', '\\x00', 'k')",
                ("ef" * 32, stored.row.digest),
            )
            await holder.execute(  # heads are read from the log, appended in the same commit
                "INSERT INTO receipt_log (tenant, sequence, digest, nodes) "
                "VALUES ('acme', 2, %s, %s)",
                ("ef" * 32, bytes(64)),
            )
            await holder.commit()
            moved = await waiting
    assert moved == {"acme": (2, "ef" * 32)}  # and nothing of ours was inserted:
    async with pql_app.pool.connection() as conn:
        cur = await conn.execute("SELECT digest FROM receipts WHERE tenant = 'acme' ORDER BY 1")
        assert [r[0] for r in await cur.fetchall()] == sorted([stored.row.digest, "ef" * 32])


async def _until_waiting_on_a_lock(app: PqlApp) -> None:
    """Until a session of this test's own database waits on the chain lock (other tests'
    databases share the server); fails after a minute."""
    async with asyncio.timeout(60), app.pool.connection() as conn:
        while True:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock' "
                "AND query LIKE '%chain_lock%'"
            )
            row = await cur.fetchone()
            if row is not None and row[0] > 0:
                return
            await asyncio.sleep(0.01)


async def test_one_tenants_bad_row_never_fails_another_tenants_writes(pql_app: PqlApp) -> None:
    """A row Postgres refuses (NUL in a text column; validation keeps these out, this is the
    defence behind it) fails only its own caller, though group commit put it in one round
    with other tenants' receipts."""
    writer = ChainWriter(pql_app.store, PemSigner.generate())
    good = [
        PreparedReceipt(s.body, None) for s in submissions("acme", 0, 2) + submissions("beta", 2, 1)
    ]
    [bad_body] = [s.body for s in submissions("gamma", 9, 1)]
    bad = PreparedReceipt(bad_body.model_copy(update={"execution_id": "x\x00"}), None)
    results = await asyncio.gather(
        writer.append("acme", good[:1]),
        writer.append("gamma", [bad]),
        writer.append("acme", good[1:2]),
        writer.append("beta", good[2:]),
        return_exceptions=True,
    )
    assert isinstance(results[1], InvalidArgument)
    ok = [r for i, r in enumerate(results) if i != 1]
    assert all(isinstance(r, list) for r in ok), ok
    assert [s.row.sequence for r in ok for s in r] == [1, 2, 1]  # type: ignore[union-attr]
    for tenant, count in (("acme", 2), ("beta", 1), ("gamma", 0)):
        rows = await pql_app.store.list_receipts(tenant, 0, 10)
        assert [r.sequence for r in rows] == list(range(1, count + 1))
    # And the writer goes on: gamma's next good receipt is its first.
    [stored] = await writer.append("gamma", [PreparedReceipt(bad_body, None)])
    assert stored.row.sequence == 1
