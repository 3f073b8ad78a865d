"""Protobuf <-> domain for `mc.pql.v1.ReceiptLogService` (beside convert.py, which serves
`ProvenanceService`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from mc.pql.v1 import provenance_pb2 as pb
from mc.pql.v1 import receipt_log_service_pb2 as log_pb
from mc_common.receipts.note import NoteSigner
from mc_common.signing import PublicKey
from mc_pql.log import AuditEvent, AuditProgress, AuditSummary, InclusionProof
from mc_pql.log_store import LogEntryRow, StoredCheckpoint
from mc_pql.models import Failure


def checkpoint(stored: StoredCheckpoint, origin: str) -> log_pb.Checkpoint:
    return log_pb.Checkpoint(
        note=stored.note, origin=origin, size=stored.size, root_hash=stored.root
    )


def inclusion(proof: InclusionProof, origin: str) -> log_pb.GetInclusionProofResponse:
    out = log_pb.GetInclusionProofResponse(
        leaf_index=proof.leaf_index, tree_size=proof.tree_size, hashes=proof.hashes
    )
    if proof.checkpoint is not None:
        out.checkpoint.CopyFrom(checkpoint(proof.checkpoint, origin))
    return out


def entry(row: LogEntryRow) -> log_pb.LogEntry:
    return log_pb.LogEntry(
        leaf_index=row.leaf_index,
        envelope=row.envelope or b"",
        client_envelope=row.client_envelope or b"",
        digest=row.digest,
        missing=row.envelope is None,
    )


def audit_event(event: AuditEvent, origin: str) -> log_pb.AuditLogResponse:
    if isinstance(event, AuditProgress):
        return log_pb.AuditLogResponse(
            progress=log_pb.AuditProgress(verified=event.verified, total=event.total)
        )
    if isinstance(event, Failure):
        return log_pb.AuditLogResponse(
            failure=pb.VerificationFailure(
                code=event.code, message=event.message, sequence=event.sequence
            )
        )
    summary: AuditSummary = event
    return log_pb.AuditLogResponse(
        summary=log_pb.AuditSummary(
            checkpoint=checkpoint(summary.checkpoint, origin),
            receipts_checked=summary.receipts_checked,
            root_matches=summary.root_matches,
            valid=summary.valid,
            receipts_stored=summary.receipts_stored,
        )
    )


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    out = Timestamp()
    out.FromDatetime(value)
    return out


def verification_keys(
    current: PublicKey,
    previous: list[PublicKey],
    validity: Mapping[str, tuple[datetime | None, datetime | None]],
    checkpoint_signer: NoteSigner,
) -> log_pb.GetVerificationKeysResponse:
    keys = []
    for key, is_current in [(current, True), *((k, False) for k in previous)]:
        not_before, not_after = validity.get(key.key_id, (None, None))
        keys.append(
            log_pb.VerificationKey(
                key_id=key.key_id,
                algorithm="ES256",
                public_key_pem=key.pem().decode(),
                jwk=json.dumps(key.jwk(), sort_keys=True),
                current=is_current,
                not_before=_ts(not_before),
                not_after=None if is_current else _ts(not_after),
            )
        )
    return log_pb.GetVerificationKeysResponse(
        receipt_keys=keys,
        checkpoint_verifier_key=checkpoint_signer.verifier.vkey(),
        checkpoint_key_pem=checkpoint_signer.public_key_pem(),
    )
