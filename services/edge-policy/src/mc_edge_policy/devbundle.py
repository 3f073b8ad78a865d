"""A development bundle: a local signing key, its key ring, and the seed policies signed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mc_edge_policy.builder import build_bundle, seed_policy_sources
from mc_edge_policy.keys import keyring_json
from mc_edge_policy.signatures import KeyRing, SigningKey

DEV_KEY_ID = "mc-dev"


@dataclass(frozen=True)
class DevBundlePaths:
    cache_dir: Path
    keyring: Path
    bundle: Path


def prepare_dev_bundle(root: Path) -> DevBundlePaths:
    """Create (once) a dev key, and build a fresh seed bundle signed with it."""
    root.mkdir(parents=True, exist_ok=True)
    key_path = root / "signing-key.pem"
    if key_path.exists():
        key = SigningKey.from_pem(DEV_KEY_ID, key_path.read_bytes())
    else:
        key = SigningKey.generate(DEV_KEY_ID)
        key_path.write_bytes(key.private_pem())
        key_path.chmod(0o600)
    keyring = root / "trusted-keys.json"
    keyring.write_text(
        keyring_json([{"kid": DEV_KEY_ID, "algorithm": "ES256", "pem": key.public_pem().decode()}])
    )
    now = datetime.now(UTC)
    built = build_bundle(
        seed_policy_sources(),
        key=key,
        verify_with=KeyRing([key.verification_key()]),
        version=int(now.timestamp()),
        now=now,
        valid_for=timedelta(days=1),
    )
    bundle = root / "bundle.tar.gz"
    bundle.write_bytes(built.archive)
    return DevBundlePaths(root / "cache", keyring, bundle)
