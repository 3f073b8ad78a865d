"""The policy decision point: activates verified bundles and fails closed when it cannot trust.

A bundle activates only after its OPA signature verifies under a trusted key, its version is
not older than the active one (rollback), and it compiles; otherwise it is quarantined and the
active bundle keeps serving. The PDP serves the active bundle until its freshness ends: the
earlier of the expiry signed into the bundle manifest and the expiry of the distribution's
signed timestamp metadata. From then on every decision is a deny with a clear reason, and
status reports stale, until a fresh bundle or fresh metadata arrives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from mc_edge_policy.bundle import BundleFormatError, Manifest, read_archive, read_manifest
from mc_edge_policy.compiler import PackagePolicy, PolicyCompileError, compile_policies
from mc_edge_policy.evaluator import EvaluationError, Evaluator, RawDecision
from mc_edge_policy.redact import redact
from mc_edge_policy.signatures import KeyRing, SignatureError, verify_bundle_files

log = logging.getLogger("mc.edge_policy.pdp")

ACTIVE_FILE = "active.tar.gz"
STATE_FILE = "state.json"
QUARANTINE_DIR = "quarantine"
MAX_QUARANTINED = 16
FAIL_CLOSED_RULE = "pdp.fail_closed"


class RejectionKind(StrEnum):
    """Why a bundle was refused (the quarantine reason)."""

    FORMAT = "format"
    SIGNATURE = "signature"
    ROLLBACK = "rollback"
    EXPIRED = "expired"
    COMPILE = "compile"


class BundleRejected(Exception):
    """A bundle that must never activate; it has been quarantined."""

    def __init__(self, kind: RejectionKind, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class PdpState(StrEnum):
    """What the PDP can do right now."""

    SERVING = "serving"
    STALE = "stale"
    EMPTY = "empty"


@dataclass(frozen=True, slots=True)
class ActiveBundle:
    """The bundle decisions come from."""

    evaluator: Evaluator
    manifest: Manifest
    digest: str
    key_id: str
    version: int
    signed_expires_at: datetime
    activated_at: datetime


@dataclass(frozen=True, slots=True)
class PdpStatus:
    """Health of the PDP: serving, stale (failing closed) or empty, and why."""

    state: PdpState
    reason: str
    bundle_digest: str = ""
    bundle_version: int = 0
    fresh_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks, from credentials and the authenticated tenant context (never from input)."""

    tenant: str
    principal: str = ""
    spiffe_id: str = ""


@dataclass(frozen=True, slots=True)
class FiredRule:
    """A rule that produced a deny (or the allow rule that did not hold), with its annotation."""

    rule: str
    reason: str
    title: str = ""
    remediation: str = ""
    deprecated: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision, as returned to the caller and published to `mc.policy.decisions`."""

    decision_id: str
    tenant: str
    execution_id: str
    policy: str
    bundle_digest: str
    bundle_version: int
    allow: bool
    rule: str
    reason: str
    remediation: str
    retry_after_ms: int | None
    throttle: Any
    fired: tuple[FiredRule, ...]
    decided_at: datetime
    fail_closed: bool = False


@dataclass(frozen=True, slots=True)
class Explanation:
    """A decision with the rules that fired and the input it saw, secrets redacted."""

    decision: Decision
    redacted_input: dict[str, Any]


def _metadata_datetime(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise BundleRejected(RejectionKind.FORMAT, f"manifest metadata lacks {what}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BundleRejected(RejectionKind.FORMAT, f"malformed {what} {value!r}") from exc
    if parsed.tzinfo is None:
        raise BundleRejected(RejectionKind.FORMAT, f"{what} has no time zone")
    return parsed


class PolicyDecisionPoint:
    """Holds the active bundle and makes decisions; see the module docstring."""

    def __init__(
        self,
        keys: KeyRing,
        cache_dir: Path | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._keys = keys
        self._cache_dir = cache_dir
        self._clock = clock
        self._active: ActiveBundle | None = None
        self._metadata_expires: datetime | None = None
        self._highest_version = 0
        self.rejections: dict[RejectionKind, int] = dict.fromkeys(RejectionKind, 0)

    @property
    def active(self) -> ActiveBundle | None:
        return self._active

    # -- activation ---------------------------------------------------------------------------

    def check(self, archive: bytes, *, allow_expired: bool = False) -> ActiveBundle:
        """Verify and compile `archive` without activating it; raises BundleRejected.

        `allow_expired` is for the bootstrap from cache only: an expired bundle then loads but
        the PDP reports stale and denies until fresh metadata or a fresh bundle arrives.
        """
        now = self._clock()
        digest = hashlib.sha256(archive).hexdigest()
        try:
            files = read_archive(archive)
            manifest = read_manifest(files)
        except BundleFormatError as exc:
            raise BundleRejected(RejectionKind.FORMAT, str(exc)) from exc
        try:
            signature = verify_bundle_files(files, self._keys, now=now)
        except SignatureError as exc:
            raise BundleRejected(RejectionKind.SIGNATURE, str(exc)) from exc
        meta = manifest.metadata.get("mc")
        if not isinstance(meta, dict) or not isinstance(meta.get("version"), int):
            raise BundleRejected(RejectionKind.FORMAT, "manifest metadata lacks mc.version")
        version = meta["version"]
        expires = _metadata_datetime(meta.get("expires"), "mc.expires")
        if version < self._highest_version:
            raise BundleRejected(
                RejectionKind.ROLLBACK,
                f"version {version} is older than version {self._highest_version} already seen",
            )
        active = self._active
        if active is not None and version == active.version and digest != active.digest:
            raise BundleRejected(
                RejectionKind.ROLLBACK, f"version {version} reused for different content"
            )
        if expires <= now and not allow_expired:
            raise BundleRejected(RejectionKind.EXPIRED, f"bundle expired at {expires}")
        try:
            compiled = compile_policies(files, manifest)
        except (PolicyCompileError, BundleFormatError) as exc:  # e.g. a signed non-UTF-8 module
            raise BundleRejected(RejectionKind.COMPILE, str(exc)) from exc
        return ActiveBundle(
            Evaluator(compiled), manifest, digest, signature.key_id, version, expires, now
        )

    def activate(self, archive: bytes, *, metadata_expires: datetime | None = None) -> ActiveBundle:
        """Verify, compile and switch to `archive`; a refused bundle is quarantined."""
        try:
            candidate = self.check(archive)
        except BundleRejected as exc:
            self.rejections[exc.kind] += 1
            self._quarantine(archive, exc)
            raise
        if self._active is not None and candidate.digest == self._active.digest:
            if metadata_expires is not None:
                self._metadata_expires = metadata_expires
            return self._active
        self._active = candidate
        self._highest_version = candidate.version
        if metadata_expires is not None:
            self._metadata_expires = metadata_expires
        self._persist(archive)
        log.info(
            "bundle activated", extra={"digest": candidate.digest, "version": candidate.version}
        )
        return candidate

    def extend_freshness(self, metadata_expires: datetime) -> None:
        """Record the expiry of freshly verified distribution metadata for the active bundle."""
        self._metadata_expires = metadata_expires
        self._persist(None)

    def bootstrap(self) -> ActiveBundle | None:
        """Load the last good bundle from the cache directory (verified again), if any."""
        if self._cache_dir is None:
            return None
        path = self._cache_dir / ACTIVE_FILE
        if not path.exists():
            return None
        state = self._read_state()
        try:
            candidate = self.check(path.read_bytes(), allow_expired=True)
        except BundleRejected as exc:
            log.error("cached bundle refused", extra={"reason": str(exc)})
            return None
        self._active = candidate
        self._highest_version = max(candidate.version, int(state.get("highest_version", 0)))
        expires = state.get("metadata_expires")
        if isinstance(expires, str) and state.get("digest") == candidate.digest:
            self._metadata_expires = datetime.fromisoformat(expires)
        return candidate

    def _read_state(self) -> dict[str, Any]:
        assert self._cache_dir is not None
        try:
            value = json.loads((self._cache_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def _persist(self, archive: bytes | None) -> None:
        if self._cache_dir is None or self._active is None:
            return
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        if archive is not None:
            _atomic_write(self._cache_dir / ACTIVE_FILE, archive)
        state = {
            "digest": self._active.digest,
            "highest_version": self._highest_version,
            "metadata_expires": self._metadata_expires.isoformat()
            if self._metadata_expires
            else None,
        }
        _atomic_write(self._cache_dir / STATE_FILE, json.dumps(state).encode())

    def _quarantine(self, archive: bytes, error: BundleRejected) -> None:
        log.warning("bundle quarantined", extra={"reason": str(error)})
        if self._cache_dir is None:
            return
        directory = self._cache_dir / QUARANTINE_DIR
        directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(archive).hexdigest()
        _atomic_write(directory / f"{digest}.tar.gz", archive)
        _atomic_write(directory / f"{digest}.reason", str(error).encode())
        kept = sorted(directory.glob("*.tar.gz"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-MAX_QUARANTINED]:
            old.unlink(missing_ok=True)
            old.with_suffix("").with_suffix(".reason").unlink(missing_ok=True)

    # -- freshness ----------------------------------------------------------------------------

    def status(self) -> PdpStatus:
        active = self._active
        if active is None:
            return PdpStatus(PdpState.EMPTY, "no verified policy bundle has been activated")
        fresh_until = active.signed_expires_at
        if self._metadata_expires is not None:
            fresh_until = min(fresh_until, self._metadata_expires)
        if self._clock() >= fresh_until:
            return PdpStatus(
                PdpState.STALE,
                f"policy bundle v{active.version} is stale: its signed metadata expired at "
                f"{fresh_until.isoformat()}",
                active.digest,
                active.version,
                fresh_until,
            )
        return PdpStatus(PdpState.SERVING, "", active.digest, active.version, fresh_until)

    # -- decisions ----------------------------------------------------------------------------

    def decide(
        self,
        caller: Caller,
        package: str,
        input_document: dict[str, Any],
        *,
        execution_id: str = "",
    ) -> Decision:
        """Decide; stale, empty or erroring evaluation yields a fail-closed deny."""
        return self._decide(caller, package, input_document, execution_id)[0]

    def explain(
        self,
        caller: Caller,
        package: str,
        input_document: dict[str, Any],
        *,
        execution_id: str = "",
    ) -> Explanation:
        decision, effective_input = self._decide(caller, package, input_document, execution_id)
        return Explanation(decision, redact(effective_input))

    def _decide(
        self, caller: Caller, package: str, input_document: dict[str, Any], execution_id: str
    ) -> tuple[Decision, dict[str, Any]]:
        effective = with_caller(input_document, caller)
        policy_name = package.strip("/").replace("/", ".")
        status = self.status()
        active = self._active
        if status.state is not PdpState.SERVING or active is None:
            return self._fail_closed(caller, policy_name, execution_id, status.reason), effective
        policy = active.evaluator.package(package)  # UnknownPackage -> NOT_FOUND
        try:
            raw = active.evaluator.evaluate(package, effective)
        except EvaluationError as exc:
            return (
                self._fail_closed(caller, policy_name, execution_id, f"policy error: {exc}"),
                effective,
            )
        return self._assemble(caller, policy, active, raw, execution_id), effective

    def _fail_closed(self, caller: Caller, policy: str, execution_id: str, reason: str) -> Decision:
        active = self._active
        return Decision(
            decision_id=str(uuid.uuid4()),
            tenant=caller.tenant,
            execution_id=execution_id,
            policy=policy,
            bundle_digest=active.digest if active else "",
            bundle_version=active.version if active else 0,
            allow=False,
            rule=FAIL_CLOSED_RULE,
            reason=reason,
            remediation="The PDP denies while it has no fresh, verified bundle; check the "
            "distribution origins and the bundle signer.",
            retry_after_ms=None,
            throttle=None,
            fired=(FiredRule(FAIL_CLOSED_RULE, reason),),
            decided_at=self._clock(),
            fail_closed=True,
        )

    def _assemble(
        self,
        caller: Caller,
        policy: PackagePolicy,
        active: ActiveBundle,
        raw: RawDecision,
        execution_id: str,
    ) -> Decision:
        fired = [
            _fired(policy, str(d.get("rule") or f"{policy.package}.deny"), d)
            for d in sorted(raw.denies, key=lambda d: json.dumps(d, sort_keys=True))
        ]
        if raw.allow is False and not fired:
            fired.append(_fired(policy, f"{policy.package}.allow", {"reason": "not_allowed"}))
        allow = not fired
        retry = [
            int(d["retryAfterMs"])
            for d in raw.denies
            if isinstance(d.get("retryAfterMs"), int | float) and d["retryAfterMs"] >= 0
        ]
        first = fired[0] if fired else None
        return Decision(
            decision_id=str(uuid.uuid4()),
            tenant=caller.tenant,
            execution_id=execution_id,
            policy=policy.package,
            bundle_digest=active.digest,
            bundle_version=active.version,
            allow=allow,
            rule=first.rule if first else f"{policy.package}.allow",
            reason=first.reason if first else "",
            remediation=first.remediation if first else "",
            retry_after_ms=max(retry) if retry else None,
            throttle=raw.throttle,
            fired=tuple(fired),
            decided_at=self._clock(),
        )


def _fired(policy: PackagePolicy, rule: str, entry: dict[str, Any]) -> FiredRule:
    annotation = policy.annotations.get(rule, {})
    custom = annotation.get("custom") if isinstance(annotation.get("custom"), dict) else {}
    assert isinstance(custom, dict)
    details = {k: v for k, v in entry.items() if k not in ("rule", "reason")}
    return FiredRule(
        rule=rule,
        reason=str(entry.get("reason", "")),
        title=str(annotation.get("title", "")),
        remediation=str(custom.get("remediation", "")),
        deprecated=str(custom.get("deprecated", "")),
        details=redact(details),
    )


def with_caller(input_document: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """The input with `caller` and `tenant.id` set from credentials, whatever the client sent."""
    effective = dict(input_document)
    tenant = effective.get("tenant")
    effective["tenant"] = {**(tenant if isinstance(tenant, dict) else {}), "id": caller.tenant}
    effective["caller"] = {
        "tenant": caller.tenant,
        "principal": caller.principal,
        "spiffe_id": caller.spiffe_id,
    }
    return effective


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    temporary.write_bytes(data)
    os.replace(temporary, path)
