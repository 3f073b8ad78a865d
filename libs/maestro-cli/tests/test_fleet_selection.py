"""`maestro dev up --only`: services come from the declarations; unknown names are errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from maestro_cli.fleet import FleetError, select_services
from mc_common.manifest import load_services

MAESTRO = [sys.executable, "-m", "maestro_cli.main"]


def test_only_selects_declared_services() -> None:
    assert [m.name for m in select_services(("pql",))] == ["pql"]
    assert select_services() == load_services()


def test_only_with_an_unknown_name_lists_the_valid_ones() -> None:
    names = ", ".join(m.name for m in load_services())
    with pytest.raises(FleetError, match=f"unknown service nope; services: {names}"):
        select_services(("pql", "nope"))


def test_dev_up_with_an_unknown_name_fails_before_starting_anything(tmp_path: Path) -> None:
    data = tmp_path / "dev"
    result = subprocess.run(
        [*MAESTRO, "dev", "up", "--only", "nope", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    names = ", ".join(m.name for m in load_services())
    assert result.stderr.strip().splitlines() == [
        f"maestro dev up failed: unknown service nope; services: {names}"
    ]
    assert not data.exists()
