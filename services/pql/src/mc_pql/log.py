"""Each tenant's receipts as a verifiable log: checkpoints, proofs, entries and audits.

Leaf i of a tenant's RFC 9162 tree is its receipt of sequence i + 1, leaf hash
SHA-256(0x00 || digest bytes). Checkpoints are C2SP signed notes whose origin is
`<checkpoint key name>/<tenant>`. Nothing here trusts the database more than it must: the
service never signs a checkpoint smaller than one it signed before (a truncated log is
refused), and an audit recomputes the root from the receipts themselves. See ADR 0025.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import FailedPrecondition, InvalidArgument, NotFound
from mc_common.receipts import ChainLink
from mc_common.receipts.merkle import (
    consistency_nodes,
    consistency_proof,
    extend_frontier,
    fold,
    inclusion_nodes,
    inclusion_proof,
    leaf_hash,
    root_from_nodes,
    root_nodes,
)
from mc_common.receipts.note import Checkpoint, NoteSigner, sign_checkpoint
from mc_common.signing import KeyRing
from mc_pql.log_store import LogEntryRow, LogStore, NodeMissingError, StoredCheckpoint
from mc_pql.models import Failure, ReceiptRow
from mc_pql.provenance import Provenance, verify_page

MAX_ENTRIES = 1000
MAX_ENTRY_BYTES = 2 << 20
AUDIT_PAGE = 500


@dataclass(frozen=True, slots=True)
class InclusionProof:
    leaf_index: int
    tree_size: int
    hashes: list[bytes]
    checkpoint: StoredCheckpoint | None


@dataclass(frozen=True, slots=True)
class AuditProgress:
    verified: int
    total: int


@dataclass(frozen=True, slots=True)
class AuditSummary:
    checkpoint: StoredCheckpoint
    receipts_checked: int
    root_matches: bool
    valid: bool
    receipts_stored: int


AuditEvent = AuditProgress | Failure | AuditSummary


class CheckpointSigner:
    """Signs tenants' checkpoints with the service's Ed25519 note key (CPU only)."""

    def __init__(self, signer: NoteSigner) -> None:
        self.note_signer = signer

    def origin(self, tenant: str) -> str:
        return f"{self.note_signer.name}/{tenant}"

    def sign(self, tenant: str, size: int, root: bytes) -> StoredCheckpoint:
        """A checkpoint of `tenant`'s log at (size, root), signed."""
        note = sign_checkpoint(Checkpoint(self.origin(tenant), size, root), self.note_signer)
        return StoredCheckpoint(tenant, size, root, note)


class ReceiptLog:
    """The tenant logs of one service: signs checkpoints and serves proofs and audits."""

    def __init__(self, store: LogStore, signer: CheckpointSigner, provenance: Provenance) -> None:
        self._store = store
        self._signer = signer
        self._provenance = provenance
        self._issuing: dict[str, asyncio.Lock] = {}

    @property
    def signer(self) -> NoteSigner:
        return self._signer.note_signer

    def origin(self, tenant: str) -> str:
        return self._signer.origin(tenant)

    def sign(self, tenant: str, size: int, root: bytes) -> StoredCheckpoint:
        return self._signer.sign(tenant, size, root)

    async def checkpoint(self, tenant: str) -> StoredCheckpoint:
        """A signed checkpoint at the log's current size: the newest stored one when it is
        current, else one issued now (concurrent callers of one tenant share the work)."""
        lock = self._issuing.setdefault(tenant, asyncio.Lock())
        try:
            async with lock:
                size = await self._store.size(tenant)
                latest = await self._store.latest_checkpoint(tenant)
                if latest is not None and latest.size > size:
                    raise FailedPrecondition(
                        f"the log of this tenant ends at {size} but a checkpoint of size "
                        f"{latest.size} was signed: receipts were removed behind the service",
                        reason=ErrorReason.ERROR_REASON_LOG_TRUNCATED,
                    )
                if latest is not None and latest.size == size:
                    return latest
                root = root_from_nodes(size, await self._nodes(tenant, root_nodes(size)))
                issued = self.sign(tenant, size, root)
                await self._store.insert_checkpoints([issued])
                return await self._store.checkpoint_at(tenant, size) or issued
        finally:
            if not lock.locked() and not lock._waiters:  # type: ignore[attr-defined]
                self._issuing.pop(tenant, None)

    async def _nodes(
        self, tenant: str, wanted: list[tuple[int, int]]
    ) -> dict[tuple[int, int], bytes]:
        try:
            return await self._store.nodes(tenant, wanted)
        except NodeMissingError as exc:
            raise FailedPrecondition(
                str(exc), reason=ErrorReason.ERROR_REASON_LOG_CORRUPTED
            ) from exc

    async def inclusion(self, tenant: str, digest: str, tree_size: int) -> InclusionProof:
        """The inclusion proof of receipt `digest` in the tree of `tree_size` (0: current)."""
        index, size = await self._store.locate(tenant, digest)
        if index is None:
            raise NotFound(
                f"receipt {digest} not found", reason=ErrorReason.ERROR_REASON_RECEIPT_NOT_FOUND
            )
        checkpoint = None
        if tree_size == 0:
            checkpoint = await self.checkpoint(tenant)
            tree_size = checkpoint.size
        elif tree_size > size:
            raise InvalidArgument.field("tree_size", f"the log has {size} leaves, not {tree_size}")
        if index >= tree_size:
            raise InvalidArgument.field(
                "tree_size", f"the receipt is leaf {index}, not in a tree of {tree_size}"
            )
        nodes = await self._nodes(tenant, inclusion_nodes(index, tree_size))
        return InclusionProof(
            index, tree_size, inclusion_proof(index, tree_size, nodes), checkpoint
        )

    async def consistency(self, tenant: str, first: int, second: int) -> list[bytes]:
        """The consistency proof from the tree of `first` leaves to the tree of `second`."""
        if first > second:
            raise InvalidArgument.field("first_size", "must not exceed second_size")
        await self._check_size("second_size", tenant, second)
        nodes = await self._nodes(tenant, consistency_nodes(first, second))
        return consistency_proof(first, second, nodes)

    async def _check_size(self, field: str, tenant: str, size: int) -> None:
        current = await self._store.size(tenant)
        if size > current:
            raise InvalidArgument.field(field, f"the log has {current} leaves, not {size}")

    async def entries(self, tenant: str, start: int, end: int) -> list[LogEntryRow]:
        """Leaves [start, end), at most `MAX_ENTRIES` and about `MAX_ENTRY_BYTES` of them."""
        if end < start:
            raise InvalidArgument.field("end", "must not be below start")
        rows = await self._store.entries(tenant, start, min(end, start + MAX_ENTRIES))
        out: list[LogEntryRow] = []
        size = 0
        for row in rows:
            size += len(row.envelope or b"") + len(row.client_envelope or b"")
            if out and size > MAX_ENTRY_BYTES:
                break
            out.append(row)
        return out

    async def audit(self, tenant: str, start: int) -> AsyncIterator[AuditEvent]:
        """Verify receipts [start, checkpoint size) page by page, off the event loop."""
        checkpoint = await self.checkpoint(tenant)
        size = checkpoint.size
        if start > size:
            raise InvalidArgument.field("start", f"the log has {size} leaves, not {start}")
        service_keys = self._provenance.service_keys
        tenant_keys = await self._provenance.tenant_keyring(tenant)
        start_nodes = await self._nodes(tenant, root_nodes(start))
        frontier = [start_nodes[node] for node in root_nodes(start)]
        anchor: ChainLink | None = None
        if start:
            [before] = await self._store.entries(tenant, start - 1, start)
            anchor = ChainLink(tenant, start, before.digest)
        checked, valid, contiguous, after = 0, True, True, start
        while after < size:
            rows = [
                r
                for r in await self._provenance.receipt_rows(tenant, after, AUDIT_PAGE)
                if r.sequence <= size
            ]
            if not rows or rows[0].sequence != after + 1:
                missing_to = rows[0].sequence - 1 if rows else size
                valid = contiguous = False
                yield Failure(
                    "RECEIPT_MISSING",
                    f"receipts {after + 1}..{missing_to} are in the log but not stored",
                    after + 1,
                )
                if not rows:
                    break
            failures, frontier, anchor, gaps = await asyncio.to_thread(
                _verify_page, tenant, rows, anchor, frontier, service_keys, tenant_keys
            )
            contiguous = contiguous and not gaps
            for failure in failures:
                valid = False
                yield failure
            checked += len(rows)
            after = rows[-1].sequence
            yield AuditProgress(checked, size - start)
        root_matches = contiguous and fold(frontier) == checkpoint.root if size else True
        if not root_matches:
            valid = False
            yield Failure(
                "ROOT_MISMATCH",
                "the root recomputed from the stored receipts is not the checkpoint's",
                0,
            )
        stored = await self._store.stored_count(tenant, size)
        if stored < size:
            valid = False
            yield Failure(
                "RECEIPTS_MISSING",
                f"{size - stored} of the log's {size} receipts are not stored "
                "(an audit from 0 names them)",
                0,
            )
        yield AuditSummary(checkpoint, checked, root_matches, valid, stored)


def _verify_page(
    tenant: str,
    rows: list[ReceiptRow],
    anchor: ChainLink | None,
    frontier: list[bytes],
    service_keys: KeyRing,
    tenant_keys: KeyRing,
) -> tuple[list[Failure], list[bytes], ChainLink | None, bool]:
    """Verify one page of consecutive receipts and extend the Merkle frontier with them (CPU
    only: runs in a worker thread)."""
    failures, digests = verify_page(tenant, rows, anchor, service_keys, tenant_keys)
    gaps = False
    expected = rows[0].sequence
    for row, signed_digest in zip(rows, digests, strict=True):
        gaps = gaps or row.sequence != expected
        expected = row.sequence + 1
        if not gaps:  # the leaf is the digest of what was signed, not the stored column
            leaf = leaf_hash(bytes.fromhex(signed_digest or row.digest))
            frontier = extend_frontier(row.sequence - 1, frontier, leaf)
    last = rows[-1]
    anchor = ChainLink(tenant, last.sequence, digests[-1] or last.digest)
    return failures, frontier, anchor, gaps
