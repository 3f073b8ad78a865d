"""Bundle builds: lint, run the policies' own tests, compile, sign, and verify as OPA would.

A build either yields a signed archive that our OPA-rules verifier accepts and our evaluator
compiles, or raises with every reason it refused; nothing half-checked is ever returned.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from mc_edge_policy.bundle import DATA, SIGNATURES, Manifest, read_archive, write_archive
from mc_edge_policy.compiler import (
    PolicyCompileError,
    TestReport,
    analyze,
    compile_policies,
)
from mc_edge_policy.policy_check import run_isolated
from mc_edge_policy.rego_source import ModuleInfo
from mc_edge_policy.signatures import KeyRing, SigningKey, sign_files, verify_bundle_files

META_KEY = "mc"


@dataclass(frozen=True, slots=True)
class MigrationNote:
    """A deprecated rule: where it is, what to do instead, and by when."""

    package: str
    rule: str
    note: str
    replacement: str
    sunset: str

    def to_json(self) -> dict[str, str]:
        return {
            "package": self.package,
            "rule": self.rule,
            "note": self.note,
            "replacement": self.replacement,
            "sunset": self.sunset,
        }


@dataclass(frozen=True, slots=True)
class BuiltBundle:
    """A verified, signed bundle archive and what went into it."""

    archive: bytes
    digest: str  # sha256 hex of the archive bytes
    manifest: Manifest
    tests: TestReport
    migrations: tuple[MigrationNote, ...]
    key_id: str


def load_sources(root: Path) -> dict[str, bytes]:
    """The `.rego` and `data.json` files under `root`, by bundle path."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and (path.suffix == ".rego" or path.name == DATA)
    }


def seed_policy_sources() -> dict[str, bytes]:
    """The seed policies shipped with this package."""
    root = resources.files("mc_edge_policy") / "policies"
    return load_sources(Path(str(root)))


def migration_notes(modules: Sequence[ModuleInfo], today: date) -> list[MigrationNote]:
    """Notes for every rule annotated `deprecated`; raises when one is past its sunset."""
    notes: list[MigrationNote] = []
    expired: list[str] = []
    for module in modules:
        for rule in module.rules:
            custom = rule.annotation.get("custom")
            if not isinstance(custom, dict) or "deprecated" not in custom:
                continue
            rule_id = str(custom.get("id") or rule.name)
            sunset = str(custom.get("sunset", ""))
            notes.append(
                MigrationNote(
                    module.package,
                    rule_id,
                    str(custom["deprecated"]),
                    str(custom.get("replacement", "")),
                    sunset,
                )
            )
            if sunset:
                try:
                    past = date.fromisoformat(sunset) <= today
                except ValueError:
                    expired.append(f"{module.file}: {rule_id} has a malformed sunset {sunset!r}")
                    continue
                if past:
                    expired.append(f"{module.file}: {rule_id} is past its sunset {sunset}")
    if expired:
        raise PolicyCompileError("deprecated rules past their sunset", expired)
    return notes


def render_migration_notes(notes: Sequence[MigrationNote]) -> str:
    """Markdown migration notes, one section per deprecated rule."""
    if not notes:
        return "# Migration notes\n\nNo deprecated rules.\n"
    lines = ["# Migration notes", ""]
    for note in sorted(notes, key=lambda n: (n.sunset or "9999", n.rule)):
        lines.append(f"## `{note.rule}` ({note.package})")
        lines.append("")
        lines.append(note.note)
        if note.replacement:
            lines.append(f"\nReplacement: `{note.replacement}`.")
        if note.sunset:
            lines.append(f"\nRemoved after: {note.sunset}.")
        lines.append("")
    return "\n".join(lines)


def build_bundle(
    sources: Mapping[str, bytes],
    *,
    key: SigningKey,
    verify_with: KeyRing,
    version: int,
    revision: str | None = None,
    roots: Sequence[str] = ("mc",),
    rego_version: int = 1,
    now: datetime | None = None,
    valid_for: timedelta = timedelta(days=7),
    extra_metadata: Mapping[str, Any] | None = None,
) -> BuiltBundle:
    """Build, test, compile, sign and verify one bundle (see module docstring)."""
    when = now or datetime.now(UTC)
    files = {k: v for k, v in sources.items() if k not in (SIGNATURES, ".manifest")}
    draft = Manifest(revision or f"v{version}", tuple(roots), rego_version)
    modules = analyze(files, draft)
    notes = migration_notes(modules, when.date())
    metadata = {
        META_KEY: {
            "version": version,
            "built_at": when.isoformat(),
            "expires": (when + valid_for).isoformat(),
            "migrations": [n.to_json() for n in notes],
            **dict(extra_metadata or {}),
        }
    }
    manifest = Manifest(draft.revision, draft.roots, rego_version, metadata)
    report = run_isolated(files, manifest)
    if not report.ok:
        raise PolicyCompileError(
            "policy tests failed" if report.failed else "bundle has no policy tests",
            list(report.failed),
        )
    compile_policies(files, manifest)
    files[".manifest"] = json.dumps(manifest.to_json(), sort_keys=True).encode()
    files[SIGNATURES] = sign_files(files, key, issued_at=when)
    archive = write_archive(files)
    verify_bundle_files(read_archive(archive), verify_with, now=when)
    return BuiltBundle(
        archive, hashlib.sha256(archive).hexdigest(), manifest, report, tuple(notes), key.key_id
    )
