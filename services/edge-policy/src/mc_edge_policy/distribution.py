"""Fetching bundles from several origins through TUF, with health/latency ranking and failover.

The client keeps TUF's trusted metadata in a local directory and verifies everything it reads
from an origin against it: signatures and thresholds, version numbers never going back
(rollback), expiry (freeze), snapshot consistency (mix-and-match), and the bundle's length and
sha256 pinned by the signed targets metadata (a malicious or stale mirror). An origin that fails
any of that, or does not answer, is marked unhealthy and the next one is tried; origins are
ranked healthy-first by a moving average of their latency.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from tuf.api.exceptions import DownloadError, DownloadHTTPError, RepositoryError
from tuf.api.metadata import Metadata
from tuf.ngclient import FetcherInterface, Updater

from mc_edge_policy.pdp import BundleRejected, PolicyDecisionPoint

log = logging.getLogger("mc.edge_policy.distribution")

CHUNK = 64 * 1024
EWMA = 0.3
RETRY_UNHEALTHY_AFTER_S = 30.0


class OriginFetcher(FetcherInterface):
    """Fetches URLs with a timeout, timing each request for the origin's latency score."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self.elapsed_s = 0.0

    def _fetch(self, url: str) -> Iterator[bytes]:
        started = time.monotonic()
        try:
            response = urllib.request.urlopen(url, timeout=self._timeout_s)
        except urllib.error.HTTPError as exc:
            raise DownloadHTTPError(f"{url}: HTTP {exc.code}", exc.code) from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DownloadError(f"{url}: {exc}") from exc
        self.elapsed_s += time.monotonic() - started
        return self._chunks(response, started)

    def _chunks(self, response: object, started: float) -> Iterator[bytes]:
        try:
            while True:
                chunk = response.read(CHUNK)  # type: ignore[attr-defined]
                if not chunk:
                    break
                yield chunk
        except OSError as exc:
            raise DownloadError(str(exc)) from exc
        finally:
            self.elapsed_s += time.monotonic() - started
            response.close()  # type: ignore[attr-defined]


@dataclass
class OriginHealth:
    """What we know about one origin."""

    base_url: str
    latency_s: float = 0.0
    failures: int = 0
    last_failure: float = 0.0
    last_error: str = ""
    fetches: int = 0

    def healthy(self, now: float) -> bool:
        return self.failures == 0 or now - self.last_failure > RETRY_UNHEALTHY_AFTER_S


@dataclass(frozen=True)
class FetchedBundle:
    """A bundle verified by TUF, and until when the metadata that pinned it is valid."""

    archive: bytes
    sha256: str
    metadata_expires: datetime
    origin: str


class AllOriginsFailed(RuntimeError):
    """No origin produced verified metadata and target; `errors` has each origin's reason."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{o}: {e}" for o, e in errors.items()))
        self.errors = errors


@dataclass
class MultiOriginClient:
    """A TUF client for one target over several origins (see module docstring)."""

    origins: Sequence[str]
    metadata_dir: Path
    trusted_root: bytes
    target_name: str
    timeout_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    health: dict[str, OriginHealth] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        for origin in self.origins:
            self.health.setdefault(origin, OriginHealth(origin.rstrip("/")))

    def ranked(self) -> list[OriginHealth]:
        """Healthy origins by latency, then unhealthy ones by how long ago they failed."""
        now = self.clock()
        states = list(self.health.values())
        healthy = sorted((h for h in states if h.healthy(now)), key=lambda h: h.latency_s)
        unhealthy = sorted((h for h in states if not h.healthy(now)), key=lambda h: h.last_failure)
        return healthy + unhealthy

    def fetch(self) -> FetchedBundle:
        """The current bundle, verified, from the best origin that serves it correctly."""
        errors: dict[str, str] = {}
        for origin in self.ranked():
            fetcher = OriginFetcher(self.timeout_s)
            try:
                bundle = self._fetch_from(origin.base_url, fetcher)
            except Exception as exc:  # anything an origin does wrong is that origin failing
                origin.failures += 1
                origin.last_failure = self.clock()
                origin.last_error = f"{type(exc).__name__}: {exc}"[:500]
                errors[origin.base_url] = origin.last_error
                log.warning("origin failed", extra={"origin": origin.base_url, "error": str(exc)})
                continue
            origin.failures = 0
            origin.fetches += 1
            origin.latency_s = (1 - EWMA) * origin.latency_s + EWMA * fetcher.elapsed_s
            return bundle
        raise AllOriginsFailed(errors)

    def _fetch_from(self, base_url: str, fetcher: OriginFetcher) -> FetchedBundle:
        updater = Updater(
            metadata_dir=str(self.metadata_dir),
            metadata_base_url=f"{base_url}/metadata/",
            target_dir=str(self.metadata_dir / "targets"),
            target_base_url=f"{base_url}/targets/",
            fetcher=fetcher,
            bootstrap=self.trusted_root,
        )
        updater.refresh()
        info = updater.get_targetinfo(self.target_name)
        if info is None:
            raise RepositoryError(f"no target {self.target_name!r} in the signed targets")
        (self.metadata_dir / "targets").mkdir(exist_ok=True)
        path = updater.find_cached_target(info) or updater.download_target(info)
        archive = Path(path).read_bytes()
        return FetchedBundle(archive, info.hashes["sha256"], self._expiry(), base_url)

    def _expiry(self) -> datetime:
        """The earliest expiry of the trusted top-level metadata just verified."""
        expiries = []
        for role in ("timestamp", "snapshot", "targets", "root"):
            data = (self.metadata_dir / f"{role}.json").read_bytes()
            expiries.append(Metadata.from_bytes(data).signed.expires)
        return min(e if e.tzinfo else e.replace(tzinfo=UTC) for e in expiries)


class PollOutcome(StrEnum):
    """What one poll did."""

    ACTIVATED = "activated"  # a new bundle is active
    REFRESHED = "refreshed"  # same bundle, fresher metadata
    QUARANTINED = "quarantined"  # TUF-valid bundle the PDP refused (signature, compile...)
    UNREACHABLE = "unreachable"  # no origin served verified metadata


@dataclass(frozen=True)
class PollResult:
    outcome: PollOutcome
    detail: str = ""
    origin: str = ""


class BundleDistributor:
    """Polls the origins and hands verified bundles to the PDP (blocking: run in a thread)."""

    def __init__(self, client: MultiOriginClient, pdp: PolicyDecisionPoint) -> None:
        self.client = client
        self.pdp = pdp

    def poll(self) -> PollResult:
        try:
            fetched = self.client.fetch()
        except AllOriginsFailed as exc:
            return PollResult(PollOutcome.UNREACHABLE, str(exc))
        before = self.pdp.active.digest if self.pdp.active else ""
        try:
            active = self.pdp.activate(fetched.archive, metadata_expires=fetched.metadata_expires)
        except BundleRejected as exc:
            return PollResult(PollOutcome.QUARANTINED, str(exc), fetched.origin)
        outcome = PollOutcome.REFRESHED if active.digest == before else PollOutcome.ACTIVATED
        return PollResult(outcome, active.digest, fetched.origin)
