"""Plain domain records of the provenance store (no protobuf, no SQL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from mc_common.receipts import ReceiptStatement


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """An execution as the orchestrator reported it."""

    execution_id: str
    package_name: str
    package_version: str
    package_digest: str
    region: str = ""
    status: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    labels: dict[str, str] = field(default_factory=dict)
    tenant: str = ""
    recorded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """A policy decision of the policy decision point."""

    decision_id: str
    policy: str
    allow: bool
    decided_at: datetime
    execution_id: str = ""
    bundle_digest: str = ""
    rule: str = ""
    reason: str = ""
    remediation: str = ""
    tenant: str = ""
    recorded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReceiptRow:
    """A receipt row exactly as stored; nothing in it is trusted until verified."""

    tenant: str
    sequence: int
    digest: str
    previous_digest: str
    execution_id: str
    envelope: bytes
    signer_key_id: str
    client_envelope: bytes | None
    client_key_id: str | None
    recorded_at: datetime
    log_nodes: bytes = b""  # the Merkle nodes this leaf completes (set when appending)
    # Set on the first receipt a keyed RecordReceipt(s) request recorded (see `RequestKey`).
    idempotency_key: str | None = None
    request_sha256: str | None = None
    request_count: int | None = None


@dataclass(frozen=True, slots=True)
class RequestKey:
    """A write's idempotency key and the digest of the request it came with."""

    key: str
    request_sha256: str


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    """A public key registered for a tenant to sign the receipts it submits."""

    key_id: str
    tenant: str
    public_key_pem: str
    registered_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed verification check."""

    code: str
    message: str
    sequence: int = 0


@dataclass(frozen=True, slots=True)
class Verification:
    """The result of verifying one stored receipt or a whole chain."""

    failures: tuple[Failure, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.failures


@dataclass(frozen=True, slots=True)
class StoredReceipt:
    """A receipt as read: the row, the verified statement (None if invalid), the result."""

    row: ReceiptRow
    statement: ReceiptStatement | None
    verification: Verification
