"""The distribution repository: each bundle is a TUF target (python-tuf Metadata API).

Layout under the repository directory, which origins (CDNs) serve as static files:

    metadata/1.root.json             root, by version (rotations add 2.root.json, ...)
    metadata/<N>.targets.json        targets, by version: pins each bundle's length and sha256
    metadata/<N>.snapshot.json       snapshot, by version: pins the targets version
    metadata/timestamp.json          the ONLY mutable object: pins the snapshot version
    targets/<sha256>.<name>          bundle archives, by content hash

Every object but `timestamp.json` is immutable and named by version or hash, so a CDN can cache
them forever; the timestamp is short-lived (re-signed on every `refresh_timestamp`), which is
what bounds how long a frozen mirror can hold a PDP on old policy.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

ROLES = ("root", "targets", "snapshot", "timestamp")


@dataclass(frozen=True)
class Expiries:
    """How long each role's metadata is valid once signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=30)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(hours=1)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class TufRepository:
    """Publishes bundles as TUF targets into a directory origins serve (see module docstring).

    NOTE: keys live in memory here (one signer per role); production keeps root offline and
    the online roles' keys in a KMS (securesystemslib signers support both).
    """

    def __init__(
        self,
        directory: Path,
        signers: dict[str, Signer],
        *,
        expiries: Expiries = Expiries(),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.directory = directory
        self._signers = signers
        self._expiries = expiries
        self._clock = clock
        self._serializer = JSONSerializer(compact=True)
        self.root: Metadata[Root]
        self.targets: Metadata[Targets]
        self.snapshot: Metadata[Snapshot]
        self.timestamp: Metadata[Timestamp]

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        expiries: Expiries = Expiries(),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> TufRepository:
        """A new repository with fresh ECDSA keys, one per role, and empty targets."""
        signers: dict[str, Signer] = {role: CryptoSigner.generate_ecdsa() for role in ROLES}
        repo = cls(directory, signers, expiries=expiries, clock=clock)
        now = clock()
        root = Metadata(Root(expires=now + expiries.root, consistent_snapshot=True))
        for role, signer in signers.items():
            root.signed.add_key(signer.public_key, role)
        repo.root = root
        repo.targets = Metadata(Targets(expires=now + expiries.targets))
        repo.snapshot = Metadata(Snapshot(expires=now + expiries.snapshot))
        repo.timestamp = Metadata(Timestamp(expires=now + expiries.timestamp))
        repo._sign_and_write("root")
        repo._sign_and_write("targets")
        repo._sign_and_write("snapshot")
        repo._sign_and_write("timestamp")
        return repo

    def trusted_root(self) -> bytes:
        """The root metadata a client is bootstrapped with (shipped out of band)."""
        return self.root.to_bytes(self._serializer)

    def _sign_and_write(self, role: str) -> None:
        metadata: Metadata = getattr(self, role)  # type: ignore[type-arg]
        metadata.signatures.clear()
        metadata.sign(self._signers[role], append=False)
        data = metadata.to_bytes(self._serializer)
        name = "timestamp.json" if role == "timestamp" else f"{metadata.signed.version}.{role}.json"
        _write(self.directory / "metadata" / name, data)

    def publish(self, name: str, archive: bytes) -> TargetFile:
        """Add (or replace) target `name` with `archive`; new targets, snapshot, timestamp."""
        now = self._clock()
        target = TargetFile.from_data(name, archive, ["sha256"])
        _write(self.directory / "targets" / f"{target.hashes['sha256']}.{name}", archive)
        self.targets.signed.targets[name] = target
        self.targets.signed.version += 1
        self.targets.signed.expires = now + self._expiries.targets
        self._sign_and_write("targets")
        self.snapshot.signed.meta["targets.json"] = MetaFile(version=self.targets.signed.version)
        self.snapshot.signed.version += 1
        self.snapshot.signed.expires = now + self._expiries.snapshot
        self._sign_and_write("snapshot")
        self.refresh_timestamp()
        return target

    def refresh_timestamp(self) -> None:
        """Re-sign the timestamp with a new expiry (the only object that changes in place)."""
        now = self._clock()
        self.timestamp.signed.snapshot_meta = MetaFile(version=self.snapshot.signed.version)
        self.timestamp.signed.version += 1
        self.timestamp.signed.expires = now + self._expiries.timestamp
        self._sign_and_write("timestamp")
