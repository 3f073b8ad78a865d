"""The provenance domain: record, chain, serve and verify receipts, executions and decisions.

Plain Python over `ProvenanceStore`; the gRPC servicer only translates to and from protobuf.
Every method takes the tenant explicitly; rows of other tenants are simply not found.
Nothing read from the database is trusted: each receipt is verified as it is read.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from mc_common.pagetokens import PageTokenError, PageTokens
from mc_common.receipts import (
    ChainLink,
    ReceiptBody,
    ReceiptStatement,
    Subject,
    canonical_digest,
    sha256_hex,
    utc_timestamp,
    verify_chain,
    verify_receipt,
)
from mc_common.signing import (
    IN_TOTO_PAYLOAD_TYPE,
    Envelope,
    KeyRing,
    PublicKey,
    SignatureError,
    Signer,
    verify_envelope_detailed,
)
from mc_pql import rules
from mc_pql.chain_writer import ChainWriter, LogHeadListener, PreparedReceipt
from mc_pql.client_statement import (
    CLIENT_SUBJECT,
    ClientStatementError,
    parse_client_statement,
)
from mc_pql.limits import (
    MAX_REPLY_BYTES,
    REPLY_OVERHEAD_BYTES,
    receipt_reply_bytes,
    text_bytes,
)
from mc_pql.models import (
    DecisionRecord,
    ExecutionRecord,
    Failure,
    ReceiptRow,
    RequestKey,
    SigningKeyRecord,
    StoredReceipt,
    Verification,
)
from mc_pql.store import ProvenanceStore

DEFAULT_PAGE_SIZE = 50
CHAIN_PAGE = 1000


@dataclass(frozen=True, slots=True)
class ContentSubmission:
    """Receipt content for the service to sign: the body and optional explicit subjects."""

    body: ReceiptBody
    subjects: tuple[Subject, ...] = ()


@dataclass(frozen=True, slots=True)
class SignedSubmission:
    """A caller-signed DSSE envelope (JSON bytes) over a client receipt-body statement."""

    envelope: bytes


Submission = ContentSubmission | SignedSubmission


@dataclass(frozen=True, slots=True)
class ChainVerification:
    """The result of verifying a tenant's whole chain."""

    verification: Verification
    receipts_checked: int
    first_broken_sequence: int
    head_digest: str


def now_utc() -> datetime:
    return datetime.now(UTC)


# Listings, as page tokens name them: a token of one is refused by every other.
LIST_EXECUTIONS = "mc.pql.v1.executions"
LIST_RECEIPTS = "mc.pql.v1.receipts"
LIST_DECISIONS = "mc.pql.v1.decisions"


def _time_position(position: list[str | int] | None) -> tuple[datetime, str] | None:
    """(time, id) of a position this service issued; a token we signed always has one."""
    if position is None:
        return None
    if len(position) != 2 or not all(isinstance(p, str) for p in position):
        raise PageTokenError()
    try:
        return datetime.fromisoformat(str(position[0])), str(position[1])
    except ValueError as exc:
        raise PageTokenError() from exc


def _sequence_position(position: list[str | int] | None) -> int:
    if position is None:
        return 0
    if len(position) != 1 or not isinstance(position[0], int) or position[0] < 0:
        raise PageTokenError()
    return position[0]


def _page_size(size: int) -> int:
    return size if size > 0 else DEFAULT_PAGE_SIZE


T = TypeVar("T")


def _within_reply(items: list[T], size: int, bytes_of: Callable[[T], int]) -> tuple[bool, list[T]]:
    """The first `size` items that fit one reply (at least one), and whether more remain."""
    total, kept = 0, 0
    for item in items[:size]:
        total += bytes_of(item)
        if kept and total > MAX_REPLY_BYTES:
            break
        kept += 1
    return len(items) > kept, items[:kept]


def _receipt_bytes(row: ReceiptRow) -> int:
    return receipt_reply_bytes(len(row.envelope), len(row.client_envelope or b""))


def _execution_bytes(record: ExecutionRecord) -> int:
    return REPLY_OVERHEAD_BYTES + text_bytes(
        record.execution_id,
        record.tenant,
        record.package_name,
        record.package_version,
        record.package_digest,
        record.region,
        record.status,
        *record.labels,
        *record.labels.values(),
    )


def _decision_bytes(record: DecisionRecord) -> int:
    return REPLY_OVERHEAD_BYTES + text_bytes(
        record.decision_id,
        record.tenant,
        record.execution_id,
        record.policy,
        record.bundle_digest,
        record.rule,
        record.reason,
        record.remediation,
    )


class Provenance:
    """Records and serves executions, chained signed receipts and policy decisions."""

    def __init__(
        self,
        store: ProvenanceStore,
        signer: Signer,
        trusted_keys: Sequence[PublicKey] = (),
        *,
        max_batch: int = 256,
        page_tokens: PageTokens | None = None,
        on_appended: LogHeadListener | None = None,
    ) -> None:
        self._store = store
        self._signer = signer
        self._tokens = page_tokens or PageTokens([secrets.token_bytes(32)])
        self._service_keys = KeyRing([PublicKey.from_pem(signer.public_key_pem()), *trusted_keys])
        self._writer = ChainWriter(store, signer, max_batch=max_batch, on_appended=on_appended)

    # -- executions --------------------------------------------------------------------------

    async def record_execution(self, tenant: str, record: ExecutionRecord) -> ExecutionRecord:
        """Record an execution; re-recording identical content returns the stored one."""
        record = replace(record, tenant=tenant, recorded_at=None)
        digest = canonical_digest(_execution_content(record))
        stored, stored_digest = await self._store.insert_execution(tenant, record, digest)
        if stored_digest != digest:
            raise AlreadyExists(
                f"execution {record.execution_id!r} was already recorded with other content",
                reason=ErrorReason.ERROR_REASON_EXECUTION_CONFLICT,
            )
        return stored

    async def get_execution(self, tenant: str, execution_id: str) -> ExecutionRecord:
        found = await self._store.get_execution(tenant, execution_id)
        if found is None:
            raise NotFound(
                f"execution {execution_id!r} not found",
                reason=ErrorReason.ERROR_REASON_EXECUTION_NOT_FOUND,
            )
        return found

    async def list_executions(
        self, tenant: str, page_size: int, page_token: str
    ) -> tuple[list[ExecutionRecord], str]:
        size = _page_size(page_size)
        before = _time_position(
            self._tokens.open(page_token, tenant=tenant, listing=LIST_EXECUTIONS)
        )
        items = await self._store.list_executions(tenant, size + 1, before)
        more, items = _within_reply(items, size, _execution_bytes)
        last = items[-1] if items else None
        token = (
            self._tokens.issue(
                [last.recorded_at.isoformat(), last.execution_id],
                tenant=tenant,
                listing=LIST_EXECUTIONS,
            )
            if more and last and last.recorded_at
            else ""
        )
        return items, token

    # -- receipts: write path ----------------------------------------------------------------

    async def record_receipts(
        self, tenant: str, submissions: Sequence[Submission], key: RequestKey | None = None
    ) -> list[StoredReceipt]:
        """Verify, sign and chain `submissions` atomically, in order; returns them as stored.

        Concurrent calls are group-committed: one transaction appends every receipt waiting at
        that moment, for every tenant, so throughput does not collapse to one commit per call.
        With `key`, a request the tenant already made with that key returns the receipts it
        recorded then (the key is stored with them, in the same statement: ADR 0034).
        """
        if key is not None:
            replayed = await self._replay(tenant, key)
            if replayed is not None:
                return replayed
        try:
            return await self._record(tenant, submissions, key)
        except psycopg.errors.UniqueViolation:
            # Another call with the same key (another replica, or a concurrent retry) won.
            replayed = None if key is None else await self._replay(tenant, key)
            if replayed is None:
                raise
            return replayed

    async def _replay(self, tenant: str, key: RequestKey) -> list[StoredReceipt] | None:
        found = await self._store.find_request(tenant, key.key)
        if found is None:
            return None
        request_sha256, first, count = found
        if request_sha256 != key.request_sha256:
            raise AlreadyExists(
                f"idempotency key {key.key!r} was already used for another request",
                reason=ErrorReason.ERROR_REASON_IDEMPOTENCY_KEY_REUSED,
                metadata={"idempotency_key": key.key},
            )
        rows = await self._store.list_receipts(tenant, first - 1, count)
        keyring = await self._tenant_keyring(tenant)
        return [self._verified(row, keyring) for row in rows]

    async def _record(
        self, tenant: str, submissions: Sequence[Submission], key: RequestKey | None
    ) -> list[StoredReceipt]:
        keyring = KeyRing()
        if any(isinstance(item, SignedSubmission) for item in submissions):
            keyring = await self._tenant_keyring(tenant, include_revoked=False)
        prepared = [
            self._prepare(tenant, index, len(submissions), item, keyring)
            for index, item in enumerate(submissions)
        ]
        return await self._writer.append(tenant, prepared, key)

    def _prepare(
        self, tenant: str, index: int, count: int, item: Submission, keyring: KeyRing
    ) -> PreparedReceipt:
        prefix = f"receipts[{index}]." if count > 1 else ""
        if isinstance(item, ContentSubmission):
            if item.body.tenant != tenant:
                raise PermissionDenied(
                    "receipt content names another tenant",
                    reason=ErrorReason.ERROR_REASON_TENANT_MISMATCH,
                )
            return PreparedReceipt(item.body, list(item.subjects) or None)
        field_name = f"{prefix}signed_envelope"
        try:
            envelope = Envelope.from_json(item.envelope)
        except SignatureError as exc:
            raise InvalidArgument.field(field_name, f"not a DSSE envelope: {exc}") from exc
        if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise InvalidArgument.field(
                f"{field_name}.payloadType", f"must be {IN_TOTO_PAYLOAD_TYPE!r}"
            )
        try:
            verified = verify_envelope_detailed(envelope, keyring)
        except SignatureError as exc:
            raise PermissionDenied(
                f"{field_name}: signature does not verify with a key registered for the tenant "
                f"({exc})",
                reason=ErrorReason.ERROR_REASON_SIGNATURE_INVALID,
            ) from exc
        try:
            body, subjects = parse_client_statement(verified.payload)
        except ClientStatementError as exc:
            raise InvalidArgument.field(field_name, str(exc)) from exc
        if body.tenant != tenant:
            raise PermissionDenied(
                f"{field_name}: the signed statement is for another tenant",
                reason=ErrorReason.ERROR_REASON_TENANT_MISMATCH,
            )
        rules.check_body(body, subjects, f"{field_name}.statement")
        client_subject = Subject(
            name=CLIENT_SUBJECT, digest={"sha256": sha256_hex(verified.payload)}
        )
        return PreparedReceipt(
            body.model_copy(update={"recorded_at": utc_timestamp(now_utc())}),
            [*subjects, client_subject],
            client_envelope=item.envelope,
            client_key_id=verified.key_ids[0],
        )

    # -- receipts: read path -----------------------------------------------------------------

    async def get_receipt(self, tenant: str, digest: str) -> StoredReceipt:
        row = await self._store.get_receipt(tenant, digest)
        if row is None:
            raise NotFound(
                f"receipt {digest} not found", reason=ErrorReason.ERROR_REASON_RECEIPT_NOT_FOUND
            )
        return self._verified(row, await self._tenant_keyring(tenant))

    async def list_receipts(
        self, tenant: str, page_size: int, page_token: str, execution_id: str = ""
    ) -> tuple[list[StoredReceipt], str]:
        size = _page_size(page_size)
        filters = {"execution_id": execution_id}
        after = _sequence_position(
            self._tokens.open(page_token, tenant=tenant, listing=LIST_RECEIPTS, filters=filters)
        )
        rows = await self._store.list_receipts(
            tenant, after, size + 1, execution_id, max_bytes=MAX_REPLY_BYTES
        )
        more, rows = _within_reply(rows, size, _receipt_bytes)
        keyring = await self._tenant_keyring(tenant)
        token = (
            self._tokens.issue(
                [rows[-1].sequence], tenant=tenant, listing=LIST_RECEIPTS, filters=filters
            )
            if more and rows
            else ""
        )
        return [self._verified(r, keyring) for r in rows], token

    async def verify_receipt(self, tenant: str, digest: str) -> Verification:
        """Verify one receipt and its link to its predecessor."""
        stored = await self.get_receipt(tenant, digest)
        failures = list(stored.verification.failures)
        row = stored.row
        if row.sequence > 1:
            previous = await self._store.get_receipt_at(tenant, row.sequence - 1)
            if previous is None:
                failures.append(
                    Failure("PREDECESSOR_MISSING", "the previous receipt is missing", row.sequence)
                )
            elif previous.digest != row.previous_digest:
                failures.append(
                    Failure(
                        "PREVIOUS_DIGEST_MISMATCH",
                        "previous_digest does not name the stored predecessor",
                        row.sequence,
                    )
                )
        elif row.previous_digest:
            failures.append(
                Failure("GENESIS_PREVIOUS_NOT_EMPTY", "first receipt names a predecessor", 1)
            )
        return Verification(tuple(failures))

    @property
    def service_keys(self) -> KeyRing:
        """The keys receipts are signed with: the current one and the trusted earlier ones."""
        return self._service_keys

    async def tenant_keyring(self, tenant: str) -> KeyRing:
        """Every key registered for `tenant` (revoked ones too: old receipts stay valid)."""
        return await self._tenant_keyring(tenant)

    async def receipt_rows(self, tenant: str, after: int, limit: int) -> list[ReceiptRow]:
        """Up to `limit` stored rows of `tenant` after sequence `after`, unverified."""
        return await self._store.list_receipts(tenant, after, limit)

    async def verify_chain(self, tenant: str) -> ChainVerification:
        """Verify every receipt of `tenant` and every link between them, page by page.

        Each page is verified in a worker thread, so the serving event loop stays free; for
        large logs prefer the incremental, streaming audit of `mc_pql.log`."""
        service_keys = self._service_keys
        tenant_keys = await self._tenant_keyring(tenant)
        failures: list[Failure] = []
        checked, after_seq, head = 0, 0, ""
        anchor: ChainLink | None = None
        while True:
            rows = await self._store.list_receipts(tenant, after_seq, CHAIN_PAGE)
            if not rows:
                break
            page_failures, digests = await asyncio.to_thread(
                verify_page, tenant, rows, anchor, service_keys, tenant_keys
            )
            failures += page_failures
            checked += len(rows)
            last = rows[-1]
            after_seq, head = last.sequence, last.digest
            # Continue from what the rows claim; a forged link is reported above either way.
            anchor = ChainLink(tenant, last.sequence, digests[-1] or last.digest)
        first = min((f.sequence for f in failures if f.sequence), default=0)
        return ChainVerification(Verification(tuple(failures)), checked, first, head)

    def _verified(self, row: ReceiptRow, tenant_keys: KeyRing | None) -> StoredReceipt:
        report = verify_receipt(
            row.envelope, self._service_keys, expected_tenant=row.tenant, expected_digest=row.digest
        )
        failures = [Failure(str(f.code), f.message, row.sequence) for f in report.failures]
        failures += _row_failures(row, report.parsed_statement)
        if report.ok and row.signer_key_id not in report.key_ids:
            failures.append(
                Failure(
                    "ROW_MISMATCH",
                    "stored columns differ from the signed receipt: signer_key_id",
                    row.sequence,
                )
            )
        if tenant_keys is not None:
            failures += self.client_failures(row, report.parsed_statement, tenant_keys)
        verification = Verification(tuple(failures))
        statement = report.parsed_statement if verification.valid else None
        return StoredReceipt(row, statement, verification)

    @staticmethod
    def client_failures(
        row: ReceiptRow, statement: ReceiptStatement | None, tenant_keys: KeyRing
    ) -> list[Failure]:
        """The caller's signature checks of a caller-signed receipt (one whose statement names
        an `mc:client-statement` subject, whatever the row's columns say)."""
        attests_client = statement is not None and any(
            s.name == CLIENT_SUBJECT for s in statement.subject
        )
        if row.client_envelope is None:
            if attests_client:
                return [
                    Failure(
                        "CLIENT_ENVELOPE_MISSING",
                        "the receipt attests a caller-signed statement that is not stored",
                        row.sequence,
                    )
                ]
            return []
        try:
            verified = verify_envelope_detailed(
                Envelope.from_json(row.client_envelope), tenant_keys
            )
        except SignatureError as exc:
            return [Failure("CLIENT_SIGNATURE_INVALID", str(exc), row.sequence)]
        if row.client_key_id not in verified.key_ids:
            return [
                Failure(
                    "CLIENT_KEY_MISMATCH",
                    "the stored client key id is not the key the caller's signature verifies with",
                    row.sequence,
                )
            ]
        digest = sha256_hex(verified.payload)
        named = statement and any(
            s.name == CLIENT_SUBJECT and s.digest.get("sha256") == digest for s in statement.subject
        )
        if statement is not None and not named:
            return [
                Failure(
                    "CLIENT_STATEMENT_MISMATCH",
                    "the receipt does not attest the stored client statement",
                    row.sequence,
                )
            ]
        return []

    async def _tenant_keyring(self, tenant: str, *, include_revoked: bool = True) -> KeyRing:
        ring = KeyRing()
        for key in await self._store.tenant_keys(tenant):
            if include_revoked or key.revoked_at is None:
                ring.add_pem(key.public_key_pem)
        return ring

    # -- policy decisions --------------------------------------------------------------------

    async def record_decision(
        self, tenant: str, record: DecisionRecord
    ) -> tuple[DecisionRecord, bool]:
        """Record a decision; the same decision again is a no-op (created = False), the same id
        with other content is ALREADY_EXISTS naming the fields that differ."""
        record = replace(record, tenant=tenant)
        created = await self._store.record_decision(tenant, record)
        stored = await self.get_decision(tenant, record.decision_id)
        if not created:
            check_same_decision(stored, record)
        return stored, created

    async def get_decision(self, tenant: str, decision_id: str) -> DecisionRecord:
        found = await self._store.get_decision(tenant, decision_id)
        if found is None:
            raise NotFound(
                f"decision {decision_id!r} not found",
                reason=ErrorReason.ERROR_REASON_DECISION_NOT_FOUND,
            )
        return found

    async def list_decisions(
        self, tenant: str, page_size: int, page_token: str, execution_id: str = ""
    ) -> tuple[list[DecisionRecord], str]:
        size = _page_size(page_size)
        filters = {"execution_id": execution_id}
        before = _time_position(
            self._tokens.open(page_token, tenant=tenant, listing=LIST_DECISIONS, filters=filters)
        )
        items = await self._store.list_decisions(tenant, size + 1, before, execution_id)
        more, items = _within_reply(items, size, _decision_bytes)
        token = (
            self._tokens.issue(
                [items[-1].decided_at.isoformat(), items[-1].decision_id],
                tenant=tenant,
                listing=LIST_DECISIONS,
                filters=filters,
            )
            if more and items
            else ""
        )
        return items, token

    # -- tenant signing keys -----------------------------------------------------------------

    async def register_key(self, tenant: str, pem: str) -> SigningKeyRecord:
        try:
            key = PublicKey.from_pem(pem)
        except SignatureError as exc:
            raise InvalidArgument.field(
                "public_key_pem", f"not a PEM ECDSA P-256 public key: {exc}"
            ) from exc
        canonical_pem = key.pem().decode()
        stored = await self._store.register_key(key.key_id, tenant, canonical_pem)
        if stored is None:
            raise AlreadyExists(
                "this key is registered for another tenant",
                reason=ErrorReason.ERROR_REASON_KEY_IN_USE,
            )
        return stored

    async def revoke_key(self, key_id: str) -> SigningKeyRecord:
        stored = await self._store.revoke_key(key_id)
        if stored is None:
            raise NotFound(
                f"signing key {key_id} not found",
                reason=ErrorReason.ERROR_REASON_SIGNING_KEY_NOT_FOUND,
            )
        return stored


DECISION_CONTENT = (
    "execution_id",
    "policy",
    "bundle_digest",
    "rule",
    "allow",
    "reason",
    "remediation",
    "decided_at",
)


def check_same_decision(stored: DecisionRecord, new: DecisionRecord) -> None:
    """Raise ALREADY_EXISTS naming each field where `new` differs from the stored decision."""
    differing = [
        name
        for name in DECISION_CONTENT
        if _decision_value(stored, name) != _decision_value(new, name)
    ]
    if differing:
        raise AlreadyExists(
            f"decision {new.decision_id!r} was already recorded with other content "
            f"(differs in: {', '.join(differing)})",
            reason=ErrorReason.ERROR_REASON_DECISION_CONFLICT,
            metadata={"decision_id": new.decision_id, "differing_fields": ",".join(differing)},
        )


def _decision_value(record: DecisionRecord, name: str) -> object:
    value = getattr(record, name)
    return value.astimezone(UTC) if isinstance(value, datetime) else value


def _execution_content(record: ExecutionRecord) -> dict[str, Any]:
    def ts(value: datetime | None) -> str:
        return "" if value is None else utc_timestamp(value)

    return {
        "execution_id": record.execution_id,
        "package": [record.package_name, record.package_version, record.package_digest],
        "region": record.region,
        "status": record.status,
        "started_at": ts(record.started_at),
        "finished_at": ts(record.finished_at),
        "labels": dict(sorted(record.labels.items())),
    }


def verify_page(
    tenant: str,
    rows: Sequence[ReceiptRow],
    anchor: ChainLink | None,
    service_keys: KeyRing,
    tenant_keys: KeyRing,
) -> tuple[list[Failure], list[str | None]]:
    """Verify consecutive stored receipts and their links (CPU only: callers run it in a
    worker thread). Returns the failures and each receipt's digest as signed (None when its
    envelope did not parse)."""
    report = verify_chain(
        [r.envelope for r in rows], service_keys, expected_tenant=tenant, after=anchor
    )
    failures: list[Failure] = []
    for problem in report.problems:
        detail = "; ".join(f"{f.code}: {f.message}" for f in problem.receipt_failures)
        failures.append(
            Failure(
                str(problem.code),
                problem.message + (f" ({detail})" if detail else ""),
                problem.sequence or 0,
            )
        )
    for row, receipt in zip(rows, report.receipts, strict=True):
        failures += _row_failures(row, receipt.parsed_statement)
        failures += Provenance.client_failures(row, receipt.parsed_statement, tenant_keys)
    return failures, [receipt.digest for receipt in report.receipts]


def _row_failures(row: ReceiptRow, statement: ReceiptStatement | None) -> list[Failure]:
    """Columns must agree with the signed statement: a column edited in SQL is caught here."""
    if statement is None:
        return []
    predicate = statement.predicate
    mismatched = [
        name
        for name, column, signed in (
            ("sequence", row.sequence, predicate.sequence),
            ("previous_digest", row.previous_digest, predicate.previous_digest),
            ("execution_id", row.execution_id, predicate.execution_id),
        )
        if column != signed
    ]
    if not mismatched:
        return []
    return [
        Failure(
            "ROW_MISMATCH",
            f"stored columns differ from the signed receipt: {', '.join(mismatched)}",
            row.sequence,
        )
    ]
