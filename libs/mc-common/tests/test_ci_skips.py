"""Under CI=true a skipped test fails the run; locally a skip stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SUITE = """
import pytest

def test_runs():
    assert True

def test_needs_something_missing():
    pytest.skip("no such server")
"""


def run_suite(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_suite.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "mc_common.testing.ci", "-q", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # outside the repository: none of its configuration applies
        timeout=120,
    )


def test_a_skip_under_ci_fails_the_run(tmp_path: Path) -> None:
    result = run_suite(tmp_path, "true")

    assert result.returncode == 1, result.stdout
    assert "CI=true: 1 skipped test(s) fail the run" in result.stdout
    assert "test_suite.py::test_needs_something_missing" in result.stdout


def test_a_skip_outside_ci_is_only_reported(tmp_path: Path) -> None:
    result = run_suite(tmp_path, None)

    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
