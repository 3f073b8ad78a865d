"""Bundle builds: lint, policy tests, compile, sign, verify; refusal on every failure."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from edge_support import BUILD_TIME, Built

from mc_edge_policy.builder import build_bundle, render_migration_notes, seed_policy_sources
from mc_edge_policy.bundle import Manifest, read_archive, read_manifest
from mc_edge_policy.compiler import PolicyCompileError, compile_policies
from mc_edge_policy.rego_source import lint_v1
from mc_edge_policy.signatures import KeyRing, SigningKey, verify_bundle_files


def test_seed_bundle_is_opa_shaped_and_verifies(seed_v1: Built, keyring: KeyRing) -> None:
    files = read_archive(seed_v1.archive)
    assert {".manifest", ".signatures.json", "data.json"} <= set(files)
    assert "mc/residency/residency.rego" in files
    manifest = json.loads(files[".manifest"])
    assert manifest["revision"] == "v1"
    assert manifest["roots"] == ["mc"]
    assert manifest["rego_version"] == 1
    assert manifest["metadata"]["mc"]["version"] == 1
    verified = verify_bundle_files(files, keyring, now=BUILD_TIME)
    signed = set(verified.files)
    assert signed == set(files) - {".signatures.json"}
    assert seed_v1.tests.ok and len(seed_v1.tests.passed) >= 20


def test_migration_notes_come_from_deprecated_annotations(seed_v1: Built) -> None:
    notes = read_manifest(read_archive(seed_v1.archive)).metadata["mc"]["migrations"]
    assert notes == [
        {
            "package": "mc.lifecycle",
            "rule": "lifecycle.legacy_plan",
            "note": "Plan-based blocking is replaced by budget throttling (mc.budgets); "
            "move callers to it.",
            "replacement": "budgets.throttle",
            "sunset": "2099-06-01",
        }
    ]
    assert "`lifecycle.legacy_plan`" in render_migration_notes(seed_v1.migrations)


def _build(sources: dict[str, bytes], key: SigningKey, ring: KeyRing) -> None:
    build_bundle(sources, key=key, verify_with=ring, version=1, now=BUILD_TIME)


def test_failing_policy_test_refuses_the_build(signing_key: SigningKey, keyring: KeyRing) -> None:
    sources = seed_policy_sources()
    sources["mc/residency/residency_test.rego"] += (
        b'\ntest_wrong if {\n\tcount(residency.deny) == 0 with input.tenant as {"id": "x"}\n}\n'
    )
    with pytest.raises(PolicyCompileError, match="policy tests failed") as raised:
        _build(sources, signing_key, keyring)
    assert raised.value.issues == ["data.mc.residency_test.test_wrong"]


def test_v0_rules_refuse_the_build(signing_key: SigningKey, keyring: KeyRing) -> None:
    sources = seed_policy_sources()
    sources["mc/old/old.rego"] = b'package mc.old\n\ndeny[msg] {\n\tinput.x\n\tmsg := "x"\n}\n'
    with pytest.raises(PolicyCompileError, match="lint") as raised:
        _build(sources, signing_key, keyring)
    assert "v0 rule body `deny[msg] {`" in raised.value.issues[0]


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ('deny[msg] {\n\tmsg := "a"\n}', True),
        ("allow {\n\ttrue\n}", True),
        ("f(x) {\n\tx\n}", True),
        ("deny[msg] if {\n\tmsg := 1\n}", True),
        ('deny contains msg if {\n\tmsg := "a"\n}', False),
        ("allow if {\n\ttrue\n}", False),
        ('rect := {"width": 2}', False),
        ('obj := {\n\t"a": 1,\n}', False),
        ('p[k] := v if {\n\tsome k, v in {"a": 1}\n}', False),
        ("# allow {\n", False),
    ],
)
def test_v0_lint(source: str, flagged: bool) -> None:
    issues = lint_v1("x.rego", "package x\n\nimport rego.v1\n\n" + source + "\n")
    assert bool(issues) is flagged, issues


def test_missing_builtin_is_a_compile_error() -> None:
    files = {
        "p.rego": b"package mc.p\n\nimport rego.v1\n\nallow if http.send({}).status_code == 200\n"
    }
    with pytest.raises(PolicyCompileError, match=r"http\.send is not available"):
        compile_policies(files, Manifest("r"))


def test_rego_v0_manifest_skips_the_v1_lint_but_not_our_evaluator() -> None:
    files = {"p.rego": b'package mc.p\n\ndeny[msg] {\n\tinput.x\n\tmsg := "x"\n}\n'}
    with pytest.raises(PolicyCompileError, match="Rego v1 only"):
        compile_policies(files, Manifest("r", rego_version=0))


def test_whole_input_override_is_flagged(signing_key: SigningKey, keyring: KeyRing) -> None:
    sources = seed_policy_sources()
    sources["mc/limits/limits_test.rego"] += (
        b"\ntest_x if {\n\tcount(limits.violation) == 0 "
        b'with input as {"limits": {"allow": true}}\n}\n'
    )
    with pytest.raises(PolicyCompileError, match="with input as"):
        _build(sources, signing_key, keyring)


def test_rule_past_its_sunset_refuses_the_build(signing_key: SigningKey, keyring: KeyRing) -> None:
    sources = seed_policy_sources()
    path = "mc/lifecycle/lifecycle.rego"
    sources[path] = sources[path].replace(b'sunset: "2099-06-01"', b'sunset: "2026-01-01"')
    with pytest.raises(PolicyCompileError, match="past its sunset"):
        _build(sources, signing_key, keyring)


def test_build_refuses_when_its_own_verifier_does_not_trust_the_key(
    signing_key: SigningKey,
) -> None:
    other = KeyRing([SigningKey.generate("mc-test-1").verification_key()])
    with pytest.raises(Exception, match="failed to verify JWT signature"):
        _build(seed_policy_sources(), signing_key, other)


def test_builds_are_reproducible(signing_key: SigningKey, keyring: KeyRing, seed_v1: Built) -> None:
    again = build_bundle(
        seed_policy_sources(),
        key=signing_key,
        verify_with=keyring,
        version=1,
        now=BUILD_TIME,
        valid_for=timedelta(days=7),
    )
    # ECDSA signatures are randomized; everything but .signatures.json is byte-identical.
    first, second = read_archive(seed_v1.archive), read_archive(again.archive)
    first.pop(".signatures.json")
    second.pop(".signatures.json")
    assert first == second
