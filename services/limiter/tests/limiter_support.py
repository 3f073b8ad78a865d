"""Rule-building helpers shared by the limiter's tests (on pytest's pythonpath)."""

from __future__ import annotations

from typing import Any

HOUR_MS = 3_600_000


def gcra(name: str, limit: int, window_ms: int = HOUR_MS, **extra: Any) -> dict[str, Any]:
    """A GCRA (token bucket) limit as rules take it."""
    return {"name": name, "algorithm": "gcra", "limit": limit, "window_ms": window_ms, **extra}


def sliding(name: str, limit: int, window_ms: int = HOUR_MS, **extra: Any) -> dict[str, Any]:
    """A weighted sliding-window limit as rules take it."""
    return {
        "name": name,
        "algorithm": "sliding_window",
        "limit": limit,
        "window_ms": window_ms,
        **extra,
    }
