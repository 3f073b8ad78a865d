"""The witness: checkpoints published to Kafka (Tansu), checked for consistency against the
service, co-signed, and a fork refused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pql_support import md, record

from maestro_cli.witness import Witness, WitnessRefusal, run_witness
from mc.pql.v1 import receipt_log_service_pb2 as log_pb
from mc.pql.v1 import receipt_log_service_pb2_grpc as log_grpc
from mc_common.events.cloudevents import decode_record
from mc_common.receipts.note import COSIGNATURE_V1, NoteSigner, NoteVerifier, SignedNote
from mc_common.server import RunningServer, start_server
from mc_common.testing.identity import TestTrustDomain
from mc_pql.app import PqlApp
from mc_pql.settings import PqlSettings


def witness_signer() -> NoteSigner:
    return NoteSigner("witness.test/w1", Ed25519PrivateKey.generate(), COSIGNATURE_V1)


async def test_witness_cosigns_consistent_checkpoints_and_refuses_a_fork(
    pql_app: PqlApp, tmp_path: Path
) -> None:
    log = pql_app.receipt_log
    log_key = log.signer.verifier
    from test_log import tamper  # the database owner, past the triggers

    for i in range(3):
        await pql_app.provenance.record_receipts("acme", [await _content(i)])
    first = await log.checkpoint("acme")

    def proof(tenant: str, old: int, new: int) -> list[bytes]:
        return asyncio.run_coroutine_threadsafe(log.consistency(tenant, old, new), loop).result()

    loop = asyncio.get_running_loop()
    signer = witness_signer()
    witness = Witness(log_key, signer, tmp_path / "witness.json", proof)
    cosigned = await asyncio.to_thread(witness.cosign, "acme", first.note)
    assert SignedNote.parse(cosigned).verify(signer.verifier) is not None
    for i in range(3, 7):
        await pql_app.provenance.record_receipts("acme", [await _content(i)])
    second = await log.checkpoint("acme")
    await asyncio.to_thread(witness.cosign, "acme", second.note)
    # The owner rewrites the log from leaf 5 on; the service signs what it now holds.
    await tamper(pql_app, "DELETE FROM receipts WHERE tenant = 'acme' AND sequence > 5")
    await tamper(pql_app, "DELETE FROM receipt_log WHERE tenant = 'acme' AND sequence > 5")
    await tamper(pql_app, "DELETE FROM log_checkpoints WHERE tenant = 'acme' AND size > 5")
    await tamper(pql_app, "DELETE FROM receipt_facts WHERE tenant = 'acme' AND sequence > 5")
    pql_app.provenance._writer._heads.clear()
    pql_app.provenance._writer._frontiers.clear()
    for i in range(50, 54):
        await pql_app.provenance.record_receipts("acme", [await _content(i)])
    forked = await log.checkpoint("acme")
    assert forked.size == 9
    with pytest.raises(WitnessRefusal) as refused:
        await asyncio.to_thread(witness.cosign, "acme", forked.note)
    assert refused.value.fork
    # It remembers: a new witness process with the same state refuses too.
    again = Witness(log_key, signer, tmp_path / "witness.json", proof)
    assert again.forks and again.head(f"{log_key.name}/acme") is not None
    with pytest.raises(WitnessRefusal):
        await asyncio.to_thread(again.cosign, "acme", forked.note)
    # A checkpoint not signed by the log, or of another tenant, is refused as well.
    other = NoteSigner(log_key.name, Ed25519PrivateKey.generate())
    with pytest.raises(WitnessRefusal):
        witness.cosign(
            "acme",
            forked.note.split("\n\n")[0]
            + "\n\n"
            + other.signature_line(forked.note.split("\n\n")[0] + "\n"),
        )
    with pytest.raises(WitnessRefusal):
        witness.cosign("globex", first.note)


async def _content(n: int) -> object:
    from pql_support import content

    from mc_pql import convert

    return convert.content_to_submission("acme", content(f"w{n}", n), "content")


async def test_checkpoints_flow_through_kafka_to_the_witness(
    pql_settings: PqlSettings,
    kafka_bootstrap: str,
    topic_name: Callable[[str], str],
    tmp_path: Path,
    mc_trust_domain: TestTrustDomain,
) -> None:
    topic, cosigned_topic = topic_name("mc.receipts.checkpoints"), topic_name("cosigned")
    settings = pql_settings.model_copy(
        update={"kafka_bootstrap": kafka_bootstrap, "checkpoints_topic": topic,
                "decisions_topic": topic_name("decisions"), "checkpoint_interval_s": 0.2,
                "checkpoints_enabled": True}
    )  # fmt: skip
    app = await PqlApp.create(settings)
    server: RunningServer = await start_server(settings, app.spec())
    stop = asyncio.Event()
    witness_task: asyncio.Task[None] | None = None
    try:
        async with mc_trust_domain.channel(server.address) as channel:
            from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc

            stub = svc_grpc.ProvenanceServiceStub(channel)
            keys = await log_grpc.ReceiptLogServiceStub(channel).GetVerificationKeys(
                log_pb.GetVerificationKeysRequest(), metadata=md("acme")
            )
            log_key = NoteVerifier.parse(keys.checkpoint_verifier_key)
            signer = witness_signer()
            witness = Witness(log_key, signer, tmp_path / "w.json", lambda *_: [])
            witness_task = asyncio.create_task(
                run_witness(
                    witness,
                    bootstrap=kafka_bootstrap,
                    address=server.address,
                    topic=topic,
                    cosigned_topic=cosigned_topic,
                    group_id=topic_name("witness"),
                    stop=stop,
                    identity=mc_trust_domain.identity("gateway"),
                    server="test-server",
                )
            )
            for i in range(3):
                await stub.RecordReceipt(record(f"k{i}", i), metadata=md("acme"))
            for i in range(3, 6):
                await stub.RecordReceipt(record(f"k{i}", i), metadata=md("acme"))
            sizes = await _cosigned_sizes(kafka_bootstrap, cosigned_topic, signer, until=6)
            assert sizes[-1] == 6 and sizes == sorted(sizes)
    finally:
        stop.set()
        if witness_task is not None:
            await witness_task
        await server.stop(0)
        await app.close()


async def _cosigned_sizes(bootstrap: str, topic: str, signer: NoteSigner, until: int) -> list[int]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    sizes: list[int] = []
    try:
        async with asyncio.timeout(60):
            while not sizes or sizes[-1] < until:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for rec in records:
                        event = decode_record(rec.headers, rec.key, rec.value)
                        checkpoint = event.unpack(log_pb.Checkpoint)
                        assert isinstance(checkpoint, log_pb.Checkpoint)
                        SignedNote.parse(checkpoint.note).verify(signer.verifier)
                        sizes.append(checkpoint.size)
    finally:
        await consumer.stop()
    return sizes
