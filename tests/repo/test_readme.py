"""The README's everyday commands work in a fresh shell right after the first command, and the
test command leaves the working tree as it found it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCAL_BIN = str(Path.home() / ".local" / "bin")


def everyday_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Everyday commands") :]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def fresh_shell_env(tmp_path: Path) -> dict[str, str]:
    """A new shell's environment: uv's install directory is NOT on PATH."""
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p and p != LOCAL_BIN]
    path = [p for p in path if not (Path(p) / "uv").exists()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MC_", "VIRTUAL_ENV"))}
    env.update(PATH=os.pathsep.join(path), MC_IDENTITY_MODE="plaintext-dev")
    env["MC_DEV_DATA_DIR"] = str(tmp_path / "dev")  # never a real fleet's directory
    return env


def run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_everyday_commands_run_in_a_fresh_shell(tmp_path: Path) -> None:
    env = fresh_shell_env(tmp_path)
    commands = everyday_commands()
    assert all(c.startswith("scripts/uv run ") for c in commands), commands
    quick = {
        # long-running or slow commands are checked by their --help or their files
        "scripts/uv run maestro dev up": ("--help", {0}),
        "scripts/uv run maestro --help": ("", {0}),
        "scripts/uv run python scripts/gen_protos.py": ("--check", {0}),
        # no fleet runs in the temporary data dir: the answer is exit 2 with a hint
        "scripts/uv run maestro receipts verify --tenant acme": ("", {2}),
    }
    for command in commands:
        words = shlex.split(command)
        if command in quick:
            extra, codes = quick[command]
            result = run(f"{command} {extra}", env)
            assert result.returncode in codes, (command, result.stdout, result.stderr)
            assert "Traceback" not in result.stderr, (command, result.stderr)
            assert "WARNING: Running pip" not in result.stderr, command
        elif words[3:4] == ["pytest"] or words[3:4] == ["python"]:
            assert (ROOT / words[-1 if words[3] == "python" else 4]).exists(), command
        else:  # `maestro <group> <command> ...`: the command exists
            result = run(f"{shlex.join(words[:5])} --help", env)
            assert result.returncode == 0, (command, result.stderr)


def test_unreachable_fleet_hint_names_the_fix(tmp_path: Path) -> None:
    result = run("scripts/uv run maestro receipts verify --tenant acme", fresh_shell_env(tmp_path))

    assert result.returncode == 2
    assert "scripts/dev-up.sh" in result.stderr


def test_npm_ci_accepts_the_lock_and_leaves_it_unchanged(tmp_path: Path) -> None:
    for name in ("package.json", "package-lock.json"):
        shutil.copy(ROOT / name, tmp_path / name)
    before = (tmp_path / "package-lock.json").read_bytes()

    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "node_modules" / ".bin" / "buf").exists()
    assert (tmp_path / "package-lock.json").read_bytes() == before


def test_bootstrap_uses_npm_ci_and_finds_uv_without_path() -> None:
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    commands = [line.strip() for line in bootstrap.splitlines() if not line.strip().startswith("#")]
    assert any(c.startswith("npm ci ") for c in commands)
    assert not any(c.startswith("npm install") for c in commands)
    assert "scripts/uv sync" in bootstrap
    for script in ("check.sh", "dev-up.sh"):
        text = (ROOT / "scripts" / script).read_text()
        assert re.search(r"(^|\s)uv run", text.replace("scripts/uv run", "")) is None, script
