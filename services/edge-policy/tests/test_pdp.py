"""The PDP: decisions from seed policies, fail-closed on stale/unsigned/rolled-back bundles."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from edge_support import BUILD_TIME, Built, Clock, build_seed

from mc_edge_policy.bundle import read_archive, write_archive
from mc_edge_policy.evaluator import UnknownPackage
from mc_edge_policy.pdp import (
    FAIL_CLOSED_RULE,
    BundleRejected,
    Caller,
    PdpState,
    PolicyDecisionPoint,
    RejectionKind,
)
from mc_edge_policy.signatures import KeyRing, SigningKey, sign_files

ACME = Caller("acme", "user:alice", "spiffe://mc.local/ns/mc/sa/edge-fetcher")


@pytest.fixture
def clock() -> Clock:
    return Clock(BUILD_TIME + timedelta(hours=1))


@pytest.fixture
def pdp(keyring: KeyRing, clock: Clock, tmp_path: Path, seed_v1: Built) -> PolicyDecisionPoint:
    point = PolicyDecisionPoint(keyring, tmp_path / "cache", clock=clock)
    point.activate(seed_v1.archive)
    return point


def test_residency_allows_home_group_and_denies_cross_region(pdp: PolicyDecisionPoint) -> None:
    allowed = pdp.decide(ACME, "mc/residency", {"resource": {"region": "eu-central-1"}})
    assert allowed.allow and allowed.rule == "mc.residency.allow" and not allowed.fail_closed
    denied = pdp.decide(ACME, "mc.residency", {"resource": {"region": "us-east-1"}})
    assert not denied.allow
    assert denied.rule == "residency.cross_region"
    assert denied.reason == "cross_region_denied"
    assert denied.remediation.startswith("Run the work in a region")


def test_tenant_comes_from_the_caller_not_the_input(pdp: PolicyDecisionPoint) -> None:
    # acme lives in the EU; claiming to be globex (US) in the input does not help.
    forged = {"tenant": {"id": "globex"}, "resource": {"region": "us-east-1"}}
    assert not pdp.decide(ACME, "mc/residency", forged).allow


def test_spiffe_identity_from_the_caller(pdp: PolicyDecisionPoint) -> None:
    fetch = {"action": "bundle.fetch"}
    assert pdp.decide(ACME, "mc/authz", fetch).allow
    publish = pdp.decide(ACME, "mc/authz", {"action": "bundle.publish"})
    assert not publish.allow and publish.rule == "authz.action_not_allowed"
    forged = {"action": "bundle.fetch", "caller": {"spiffe_id": ACME.spiffe_id}}
    assert not pdp.decide(Caller("acme"), "mc/authz", forged).allow


def test_rate_limit_advice_carries_retry_after(pdp: PolicyDecisionPoint) -> None:
    decision = pdp.decide(ACME, "mc/limits", {"limits": {"allow": False, "retryAfterMs": 1500}})
    assert not decision.allow and decision.retry_after_ms == 1500
    assert pdp.decide(ACME, "mc/limits", {"limits": {"allow": True}}).allow
    assert not pdp.decide(ACME, "mc/limits", {}).allow  # no usage known: fail closed


def test_budgets_throttle_levels(pdp: PolicyDecisionPoint) -> None:
    mild = pdp.decide(ACME, "mc/budgets", {"tenant": {"burnRate": 1.2}})
    assert mild.allow and mild.throttle == "mild"
    hard = pdp.decide(ACME, "mc/budgets", {"tenant": {"burnRate": 3}})
    assert not hard.allow and hard.throttle == "hard" and hard.rule == "budgets.hard_throttle"


def test_privacy_budget(pdp: PolicyDecisionPoint) -> None:
    spent = {"tenant": {"privacy": {"budget_total": 5, "budget_remaining": 0}}}
    assert pdp.decide(ACME, "mc/privacy", spent).reason == "privacy_budget_exceeded"


def test_deprecated_rule_firing_reports_its_note(pdp: PolicyDecisionPoint) -> None:
    decision = pdp.decide(ACME, "mc/lifecycle", {"tenant": {"plan": "legacy-free"}})
    assert decision.fired[0].deprecated.startswith("Plan-based blocking is replaced")


def test_explain_redacts_secrets(pdp: PolicyDecisionPoint) -> None:
    explained = pdp.explain(
        ACME,
        "mc/residency",
        {"resource": {"region": "us-east-1"}, "auth": {"api_key": "k-123", "note": "Bearer abc"}},
    )
    assert explained.redacted_input["auth"] == {"api_key": "[REDACTED]", "note": "[REDACTED]"}
    assert explained.decision.fired[0].title == "Request leaves the tenant's residency group"
    assert explained.decision.fired[0].details == {"home": "eu-west-1", "target": "us-east-1"}


def test_unknown_package_is_not_a_decision(pdp: PolicyDecisionPoint) -> None:
    with pytest.raises(UnknownPackage):
        pdp.decide(ACME, "mc/nothing", {})


def test_stale_bundle_fails_closed_then_recovers(
    pdp: PolicyDecisionPoint, clock: Clock, signing_key: SigningKey, keyring: KeyRing
) -> None:
    request = {"resource": {"region": "eu-west-1"}}
    assert pdp.decide(ACME, "mc/residency", request).allow
    clock.advance(timedelta(days=7))  # past the manifest's signed expiry
    assert pdp.status().state is PdpState.STALE
    stale = pdp.decide(ACME, "mc/residency", request)
    assert not stale.allow and stale.fail_closed and stale.rule == FAIL_CLOSED_RULE
    assert "stale" in stale.reason
    fresh = build_seed(signing_key, keyring, version=2, when=clock.now)
    pdp.activate(fresh.archive)
    assert pdp.status().state is PdpState.SERVING
    assert pdp.decide(ACME, "mc/residency", request).allow


def test_metadata_expiry_bounds_freshness(pdp: PolicyDecisionPoint, clock: Clock) -> None:
    pdp.extend_freshness(clock.now + timedelta(minutes=5))
    assert pdp.status().state is PdpState.SERVING
    clock.advance(timedelta(minutes=5))
    assert pdp.status().state is PdpState.STALE
    pdp.extend_freshness(clock.now + timedelta(hours=1))  # a fresh timestamp arrived
    assert pdp.status().state is PdpState.SERVING


def test_empty_pdp_denies(keyring: KeyRing, clock: Clock) -> None:
    empty = PolicyDecisionPoint(keyring, clock=clock)
    decision = empty.decide(ACME, "mc/residency", {})
    assert not decision.allow and decision.fail_closed
    assert empty.status().state is PdpState.EMPTY


def test_rollback_is_refused_and_quarantined(
    pdp: PolicyDecisionPoint, seed_v1: Built, seed_v2: Built, tmp_path: Path
) -> None:
    pdp.activate(seed_v2.archive)
    with pytest.raises(BundleRejected) as raised:
        pdp.activate(seed_v1.archive)
    assert raised.value.kind is RejectionKind.ROLLBACK
    assert pdp.active is not None and pdp.active.version == 2
    assert (tmp_path / "cache" / "quarantine" / f"{seed_v1.digest}.tar.gz").exists()


@pytest.mark.parametrize("mutation", ["tamper_policy", "drop_signature", "foreign_key", "garbage"])
def test_bad_bundles_never_activate(
    pdp: PolicyDecisionPoint, seed_v2: Built, mutation: str
) -> None:
    files = read_archive(seed_v2.archive)
    if mutation == "tamper_policy":
        path = "mc/residency/residency.rego"
        files[path] = files[path].replace(b"not same_group(home, target)", b"false")
        archive = write_archive(files)
    elif mutation == "drop_signature":
        files.pop(".signatures.json")
        archive = write_archive(files)
    elif mutation == "foreign_key":
        rogue = SigningKey.generate("mc-test-1")  # the trusted key id, another key
        files[".signatures.json"] = sign_files(files, rogue, issued_at=BUILD_TIME)
        archive = write_archive(files)
    else:
        archive = b"\x1f\x8b" + b"garbage" * 10
    with pytest.raises(BundleRejected):
        pdp.activate(archive)
    assert pdp.active is not None and pdp.active.version == 1
    denied = pdp.decide(ACME, "mc/residency", {"resource": {"region": "us-east-1"}})
    assert not denied.allow


def test_bootstrap_from_last_good_bundle(
    pdp: PolicyDecisionPoint, keyring: KeyRing, clock: Clock, tmp_path: Path
) -> None:
    restarted = PolicyDecisionPoint(keyring, tmp_path / "cache", clock=clock)
    loaded = restarted.bootstrap()
    assert loaded is not None and loaded.version == 1
    assert restarted.decide(ACME, "mc/residency", {"resource": {"region": "eu-west-1"}}).allow


def test_bootstrap_of_expired_cache_is_stale(
    pdp: PolicyDecisionPoint, keyring: KeyRing, clock: Clock, tmp_path: Path
) -> None:
    clock.advance(timedelta(days=30))
    restarted = PolicyDecisionPoint(keyring, tmp_path / "cache", clock=clock)
    assert restarted.bootstrap() is not None
    assert restarted.status().state is PdpState.STALE
    assert restarted.decide(ACME, "mc/residency", {"resource": {"region": "eu-west-1"}}).fail_closed


def test_tampered_cache_is_not_loaded(
    pdp: PolicyDecisionPoint, keyring: KeyRing, clock: Clock, tmp_path: Path
) -> None:
    cached = tmp_path / "cache" / "active.tar.gz"
    files = read_archive(cached.read_bytes())
    files["data.json"] = json.dumps({"mc": {}}).encode()
    cached.write_bytes(write_archive(files))
    restarted = PolicyDecisionPoint(keyring, tmp_path / "cache", clock=clock)
    assert restarted.bootstrap() is None
    assert restarted.decide(ACME, "mc/residency", {}).fail_closed


def test_signing_key_rotation_without_downtime(tmp_path: Path) -> None:
    old, new = SigningKey.generate("mc-2026-q3"), SigningKey.generate("mc-2026-q4")
    overlap_end = BUILD_TIME + timedelta(days=2)
    ring = KeyRing(
        [
            old.verification_key(not_after=overlap_end),
            new.verification_key(not_before=BUILD_TIME),
        ]
    )
    clock = Clock(BUILD_TIME + timedelta(hours=1))
    pdp = PolicyDecisionPoint(ring, tmp_path, clock=clock)
    pdp.activate(build_seed(old, ring, version=1).archive)
    request = {"resource": {"region": "eu-west-1"}}
    assert pdp.decide(ACME, "mc/residency", request).allow
    # During the overlap the new key's bundle activates; decisions never stop.
    pdp.activate(build_seed(new, ring, version=2).archive)
    assert pdp.active is not None and pdp.active.key_id == "mc-2026-q4"
    assert pdp.decide(ACME, "mc/residency", request).allow
    # After the overlap the old key is retired: its bundles are refused.
    clock.advance(timedelta(days=3))
    late = build_seed(old, KeyRing([old.verification_key()]), version=3, when=clock.now)
    with pytest.raises(BundleRejected) as raised:
        pdp.activate(late.archive)
    assert raised.value.kind is RejectionKind.SIGNATURE
    assert pdp.decide(ACME, "mc/residency", request).allow


def test_workers_need_a_fixed_port() -> None:
    from pydantic import ValidationError

    from mc_edge_policy.settings import EdgePolicySettings

    with pytest.raises(ValidationError, match="fixed grpc_port"):
        EdgePolicySettings(workers=2)
    assert EdgePolicySettings(workers=2, grpc_port=7304).workers == 2
