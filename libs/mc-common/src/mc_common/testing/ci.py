"""pytest plugin: under CI (`CI=true`), a skipped test fails the run.

A skip in CI means something the suite needs was missing, so what it proves was not proved;
locally a skip is reported as usual. Register with `pytest_plugins = ["mc_common.testing.ci"]`.
"""

from __future__ import annotations

import os

import pytest


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


_seen: list[str] = []  # one pytest session per process


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _seen.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _in_ci() and _seen and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _in_ci() and _seen:
        terminalreporter.write_line(
            f"CI=true: {len(_seen)} skipped test(s) fail the run (a skip in CI proves nothing):",
            red=True,
        )
        for nodeid in _seen:
            terminalreporter.write_line(f"  {nodeid}", red=True)
