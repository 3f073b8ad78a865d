"""Shared fixtures for the mc-common signing and receipts tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mc_common.receipts import (
    Cost,
    PackageRef,
    PolicyDecision,
    ReceiptBody,
    Step,
    StepOutput,
    Timing,
)
from mc_common.signing import KeyRing, PemSigner

REPO_ROOT = Path(__file__).resolve().parents[3]


def _clone_root(root: Path) -> Path:
    """The clone `root` belongs to: itself, or for a git worktree the main clone."""
    dot_git = root / ".git"
    if dot_git.is_file():  # a worktree: "gitdir: <clone>/.git/worktrees/<name>"
        gitdir = Path(dot_git.read_text().removeprefix("gitdir:").strip())
        common = gitdir / "commondir"
        if common.is_file():
            return (gitdir / common.read_text().strip()).resolve().parent
    return root


def _shared_dir() -> Path:
    """`../shared` beside the repository (beside the main clone, for a worktree), or
    `$MC_SHARED_DIR`: nowhere else."""
    if configured := os.environ.get("MC_SHARED_DIR"):
        return Path(configured)
    return _clone_root(REPO_ROOT).parent / "shared"


SIGSTORE_FIXTURES = _shared_dir() / "fixtures" / "sigstore"


@pytest.fixture
def receipt_signer() -> PemSigner:
    """A fresh P-256 signer for receipts."""
    return PemSigner.generate()


@pytest.fixture
def receipt_keyring(receipt_signer: PemSigner) -> KeyRing:
    """A key ring holding only ``receipt_signer``'s public key."""
    return KeyRing([receipt_signer.public_key])


ReceiptBodyFactory = Callable[..., ReceiptBody]


@pytest.fixture
def make_receipt_body() -> ReceiptBodyFactory:
    """Build a valid ``ReceiptBody``; keyword arguments override top-level fields."""

    def factory(**overrides: Any) -> ReceiptBody:
        fields: dict[str, Any] = {
            "tenant": "tenant-a",
            "execution_id": "exec-0001",
            "package": PackageRef(name="etl/daily", version="1.4.2", digest="ab" * 32),
            "steps": [
                Step(
                    name="extract",
                    status="succeeded",
                    started_at="2025-01-31T12:00:00Z",
                    finished_at="2025-01-31T12:00:05.250Z",
                    outputs=[StepOutput(name="rows.parquet", sha256="cd" * 32)],
                ),
                Step(
                    name="load",
                    status="failed",
                    started_at="2025-01-31T12:00:05.250Z",
                    finished_at="2025-01-31T12:00:09Z",
                ),
            ],
            "policy_decisions": [
                PolicyDecision(
                    decision_id="dec-1",
                    policy="edge-default@7",
                    rule="allow_region",
                    allow=True,
                    reason="region eu-west-1 is allowed",
                )
            ],
            "cost": Cost(currency="USD", amount_micros=12_500_000),
            "timing": Timing(started_at="2025-01-31T12:00:00Z", finished_at="2025-01-31T12:00:09Z"),
            "region": "eu-west-1",
            "recorded_at": "2025-01-31T12:00:10Z",
        }
        fields.update(overrides)
        return ReceiptBody(**fields)

    return factory


@pytest.fixture
def sigstore_fixtures(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The shared Sigstore fixture directory, with sigstore's cache/data dirs sandboxed.

    sigstore-python writes to the user's cache and data directories even offline, so both
    XDG variables point into ``tmp_path``. Fails (never skips) when the directory is absent.
    """
    assert SIGSTORE_FIXTURES.is_dir(), (
        f"shared Sigstore fixtures not found at {SIGSTORE_FIXTURES}: clone the shared fixtures "
        "beside the repository (../shared) or set MC_SHARED_DIR"
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    return SIGSTORE_FIXTURES


def pytest_configure(config: pytest.Config) -> None:
    """Load the shared infrastructure fixtures (`mc_common.testing.plugin`).

    A hook rather than `pytest_plugins`: pytest refuses `pytest_plugins` in a conftest below
    the rootdir when the whole repository is collected. Importing an already registered
    plugin (from a root conftest) is a no-op.
    """
    config.pluginmanager.import_plugin("mc_common.testing.plugin")
