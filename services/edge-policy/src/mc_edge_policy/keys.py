"""Loading the bundle verification key ring from its JSON file (rotation: two keys overlap)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from mc_edge_policy.signatures import KeyRing, VerificationKey


def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def load_keyring(path: Path | None) -> KeyRing:
    """The keys in `path` (an empty ring when unset: then no bundle verifies)."""
    if path is None:
        return KeyRing()
    entries = json.loads(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of keys")
    return KeyRing(
        VerificationKey.from_pem(
            entry["kid"],
            entry["pem"],
            entry.get("algorithm", "ES256"),
            not_before=_when(entry.get("not_before")),
            not_after=_when(entry.get("not_after")),
        )
        for entry in entries
    )


def keyring_json(keys: list[dict[str, Any]]) -> str:
    """The JSON file content for `keys` (for tooling and tests)."""
    return json.dumps(keys, indent=2)
