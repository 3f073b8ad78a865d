"""Check a Prometheus exposition with the real `promtool check metrics` (Prometheus' own
linter), an implementation independent of prometheus_client. promtool comes from Debian's
`prometheus` package (scripts/bootstrap.sh installs it); a missing promtool is an error."""

from __future__ import annotations

import shutil
import subprocess


def promtool_problems(exposition: bytes) -> list[str]:
    """The problems `promtool check metrics` reports for `exposition` (empty when clean)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        raise RuntimeError("promtool is not installed: run scripts/bootstrap.sh (as root)")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, check=False
    )
    text = (result.stdout + result.stderr).decode().strip()
    if result.returncode == 0:
        return []
    return [line for line in text.splitlines() if line.strip()] or [f"exit {result.returncode}"]
