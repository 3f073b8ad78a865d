"""`maestro receipts witness`: an independent witness of the provenance service's receipt logs.

It reads checkpoints from Kafka (`mc.receipts.checkpoints`), checks the log's signature, and
proves each new checkpoint consistent with the last one it co-signed for that log (asking the
service for an RFC 9162 consistency proof). Only then does it co-sign (C2SP tlog-cosignature/v1
with its own Ed25519 key) and publish the co-signed note (`mc.receipts.checkpoints.cosigned`).
A checkpoint that contradicts what it co-signed (a fork, a rewrite, a truncation) is refused
and recorded; it is never co-signed, whatever comes later.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mc_common.identity import WorkloadIdentity
from mc_common.receipts.merkle import ProofError, verify_consistency
from mc_common.receipts.note import NoteError, NoteSigner, NoteVerifier, open_checkpoint

ConsistencyProof = Callable[[str, int, int], list[bytes]]
"""(tenant, old size, new size) -> the log's consistency proof."""


class WitnessRefusal(Exception):
    """A checkpoint the witness will not co-sign; `fork` when it contradicts a co-signed one."""

    def __init__(self, message: str, *, fork: bool) -> None:
        super().__init__(message)
        self.fork = fork


@dataclass
class Witnessed:
    size: int
    root: bytes


class Witness:
    """Checks and co-signs checkpoints; its state (last co-signed head per origin) is a file."""

    def __init__(
        self,
        log_key: NoteVerifier,
        signer: NoteSigner,
        state_path: Path,
        consistency: ConsistencyProof,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._log_key = log_key
        self._signer = signer
        self._state_path = state_path
        self._consistency = consistency
        self._clock = clock
        self._heads: dict[str, Witnessed] = {}
        self.forks: list[str] = []
        if state_path.exists():
            saved = json.loads(state_path.read_text())
            self._heads = {
                origin: Witnessed(h["size"], base64.b64decode(h["root"]))
                for origin, h in saved.get("heads", {}).items()
            }
            self.forks = list(saved.get("forks", []))

    def head(self, origin: str) -> Witnessed | None:
        return self._heads.get(origin)

    def cosign(self, tenant: str, note: str) -> str:
        """The co-signed note, or `WitnessRefusal`."""
        try:
            checkpoint, signed = open_checkpoint(note, self._log_key)
        except NoteError as exc:
            raise WitnessRefusal(f"not a checkpoint signed by the log: {exc}", fork=False) from exc
        origin = checkpoint.origin
        if origin != f"{self._log_key.name}/{tenant}":
            raise WitnessRefusal(f"checkpoint of {origin!r} sent as tenant {tenant!r}", fork=False)
        seen = self._heads.get(origin)
        if seen is not None:
            if checkpoint.size < seen.size:
                raise WitnessRefusal(
                    f"{origin}: size {checkpoint.size} is older than the co-signed {seen.size}",
                    fork=False,
                )
            proof = (
                self._consistency(tenant, seen.size, checkpoint.size)
                if 0 < seen.size < checkpoint.size
                else []
            )
            try:
                verify_consistency(seen.size, checkpoint.size, seen.root, checkpoint.root, proof)
            except ProofError as exc:
                message = (
                    f"{origin}: FORK: size {checkpoint.size} is not consistent with the co-signed "
                    f"size {seen.size} ({exc})"
                )
                self.forks.append(message)
                self._save()
                raise WitnessRefusal(message, fork=True) from exc
        line = self._signer.cosignature_line(signed.text, int(self._clock()))
        self._heads[origin] = Witnessed(checkpoint.size, checkpoint.root)
        self._save()
        return signed.with_signature(line).render()

    def _save(self) -> None:
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "heads": {
                        o: {"size": h.size, "root": base64.b64encode(h.root).decode()}
                        for o, h in self._heads.items()
                    },
                    "forks": self.forks,
                },
                indent=2,
            )
        )
        tmp.replace(self._state_path)


async def run_witness(
    witness: Witness,
    *,
    bootstrap: str,
    address: str,
    topic: str,
    cosigned_topic: str,
    group_id: str,
    stop: asyncio.Event,
    identity: WorkloadIdentity,
    server: str = "pql",
) -> None:
    """Consume `topic` until `stop` is set: co-sign what is consistent, publish it to
    `cosigned_topic`, and print every refusal."""

    from mc.pql.v1 import receipt_log_service_pb2 as log_pb
    from mc.pql.v1 import receipt_log_service_pb2_grpc as log_grpc
    from mc_common.events.consumer import EventConsumer
    from mc_common.events.envelope import ReceivedEvent
    from mc_common.events.publisher import EventPublisher

    async with (
        identity.channel(address, server=server) as channel,
        EventPublisher(bootstrap, source="maestro-witness") as publisher,
    ):
        stub = log_grpc.ReceiptLogServiceStub(channel)
        proofs: dict[tuple[str, int, int], list[bytes]] = {}

        async def handle(event: ReceivedEvent) -> None:
            checkpoint = event.unpack(log_pb.Checkpoint)
            tenant = event.tenant
            seen = witness.head(checkpoint.origin)
            if seen is not None and 0 < seen.size < checkpoint.size:
                reply = await stub.GetConsistencyProof(
                    log_pb.GetConsistencyProofRequest(
                        first_size=seen.size, second_size=checkpoint.size
                    ),
                    metadata=(("x-mc-tenant", tenant),),
                    timeout=30,
                )
                proofs[(tenant, seen.size, checkpoint.size)] = list(reply.hashes)
            try:
                cosigned = witness.cosign(tenant, checkpoint.note)
            except WitnessRefusal as exc:
                print(f"REFUSED{' (FORK)' if exc.fork else ''}: {exc}", flush=True)
                return
            finally:
                proofs.clear()
            out = log_pb.Checkpoint()
            out.CopyFrom(checkpoint)
            out.note = cosigned
            await publisher.publish(
                cosigned_topic, tenant, "mc.receipts.checkpoint.cosigned.v1", out
            )
            print(f"co-signed {checkpoint.origin} at size {checkpoint.size}", flush=True)

        witness._consistency = lambda tenant, old, new: proofs[(tenant, old, new)]
        consumer = EventConsumer(bootstrap, topic, group_id=group_id, handler=handle)
        task = asyncio.create_task(consumer.run())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            await consumer.stop()
            await task
