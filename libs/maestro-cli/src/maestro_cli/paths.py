"""Where `maestro` keeps local state: `--data-dir`, relative to the repository root."""

from __future__ import annotations

from pathlib import Path


def repo_root() -> Path | None:
    """The repository this CLI is installed from (editable), or None when installed elsewhere."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "uv.lock").exists() and (parent / "services").is_dir():
            return parent
    return None


def data_dir(path: str | Path) -> Path:
    """A relative `--data-dir` is relative to the repository root, wherever the CLI runs."""
    candidate = Path(path)
    root = repo_root()
    if not candidate.is_absolute() and root is not None:
        candidate = root / candidate
    return candidate.resolve()
