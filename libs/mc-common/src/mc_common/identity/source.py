"""This workload's SVID, key and trust bundle, read from files and re-read when they change.

cert-manager (through the kubelet's atomic symlink swap) and spiffe-helper rewrite the files in
place before the certificate expires. `SvidSource.refresh()` is cheap enough to call on every
new connection: it looks at the files at most once per interval, and only when their stat
changed does it read, check and swap in the new material. Material that does not check out
(a chain whose key is not yet written, say) is ignored until it does; the old stays in use.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import TrustDomain, X509Bundle, X509Svid

from mc_common.identity.ids import IdentityError, trust_domain_of

log = logging.getLogger("mc.identity")

_PUBLIC = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True, slots=True)
class SvidMaterial:
    """One consistent set: the SVID chain and its key (PEM, as grpc takes them) and the bundle."""

    spiffe_id: str
    cert_chain_pem: bytes
    key_pem: bytes
    bundle_pem: bytes
    not_after: dt.datetime

    @classmethod
    def parse(
        cls, chain_pem: bytes, key_pem: bytes, bundle_pem: bytes, trust_domain: str
    ) -> SvidMaterial:
        """Check the set against the X.509-SVID rules and each other; IdentityError if not."""
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            # spiffe's parser wants PKCS#8; cert-manager writes PKCS#1 / SEC1 by default.
            pkcs8 = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            svid = X509Svid.parse(chain_pem, pkcs8)
            bundle = X509Bundle.parse(TrustDomain(trust_domain), bundle_pem)
        except Exception as error:  # cryptography's and spiffe's parse errors alike
            raise IdentityError(f"unusable SVID or bundle: {error}") from error
        leaf = svid.leaf
        if leaf.public_key().public_bytes(*_PUBLIC) != key.public_key().public_bytes(*_PUBLIC):
            raise IdentityError("the private key does not belong to the SVID's certificate")
        if not bundle.x509_authorities:
            raise IdentityError("the trust bundle holds no CA certificate")
        spiffe_id = str(svid.spiffe_id)
        if trust_domain_of(spiffe_id) != trust_domain:
            raise IdentityError(f"SVID {spiffe_id} is not in trust domain {trust_domain}")
        return cls(spiffe_id, chain_pem, key_pem, bundle_pem, leaf.not_valid_after_utc)

    def bundle_certificates(self) -> list[x509.Certificate]:
        """The CA certificates of the trust bundle."""
        return x509.load_pem_x509_certificates(self.bundle_pem)


Stamp = tuple[tuple[int, int, int], ...]


class SvidSource:
    """The current `SvidMaterial` of three files, re-read on change (thread-safe)."""

    def __init__(
        self,
        chain: Path,
        key: Path,
        bundle: Path,
        trust_domain: str,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._paths = (chain, key, bundle)
        self._trust_domain = trust_domain
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self.current = self._read()  # raises IdentityError: a workload never starts without one
        self._next_check = clock() + interval_s
        self.generation = 0
        self._warn_expiry()

    @property
    def spiffe_id(self) -> str:
        return self.current.spiffe_id

    def _stat(self) -> Stamp:
        stamps = []
        for path in self._paths:
            try:
                st = os.stat(path)  # follows the kubelet's ..data symlinks
            except OSError:
                stamps.append((0, 0, 0))
            else:
                stamps.append((st.st_mtime_ns, st.st_ino, st.st_size))
        return tuple(stamps)

    def _read(self) -> SvidMaterial:
        try:
            chain, key, bundle = (path.read_bytes() for path in self._paths)
        except OSError as error:
            raise IdentityError(f"cannot read SVID files: {error}") from error
        return SvidMaterial.parse(chain, key, bundle, self._trust_domain)

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the files if they changed (checked at most once per interval); True when
        new material was swapped in."""
        now = self._clock()
        if not force and now < self._next_check:
            return False
        with self._lock:
            self._next_check = now + self._interval
            stamp = self._stat()
            if stamp == self._stamp:
                return False
            try:
                material = self._read()
            except IdentityError as error:
                # Mid-rewrite (spiffe-helper writes the files one by one): keep the old set
                # and look again next interval.
                log.warning("new SVID files not usable yet", extra={"error": str(error)})
                return False
            self._stamp = stamp
            if material == self.current:
                return False
            self.current = material
            self.generation += 1
        log.info(
            "SVID reloaded",
            extra={"spiffe_id": material.spiffe_id, "not_after": material.not_after.isoformat()},
        )
        self._warn_expiry()
        return True

    def _warn_expiry(self) -> None:
        if self.current.not_after <= dt.datetime.now(dt.UTC):
            log.error(
                "SVID has expired: peers will refuse every new connection until it is renewed",
                extra={"spiffe_id": self.current.spiffe_id},
            )
