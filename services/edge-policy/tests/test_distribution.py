"""Distribution through TUF over several local origins: failover and every attack we know."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from edge_support import Built, Clock
from origins import Origin, serve_directory

from mc_edge_policy.app import EdgePolicyApp
from mc_edge_policy.bundle import read_archive, write_archive
from mc_edge_policy.distribution import (
    AllOriginsFailed,
    BundleDistributor,
    MultiOriginClient,
    PollOutcome,
)
from mc_edge_policy.keys import keyring_json
from mc_edge_policy.pdp import Caller, PdpState, PolicyDecisionPoint
from mc_edge_policy.settings import EdgePolicySettings
from mc_edge_policy.signatures import KeyRing, SigningKey
from mc_edge_policy.tuf_repo import Expiries, TufRepository

TARGET = "mc.tar.gz"
ACME = Caller("acme")
EU = {"resource": {"region": "eu-west-1"}}


@pytest.fixture
def repo(tmp_path: Path, live_bundle: Built) -> TufRepository:
    repository = TufRepository.create(tmp_path / "repo")
    repository.publish(TARGET, live_bundle.archive)
    return repository


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def start(stack: ExitStack, directory: Path, *, garbage: bool = False) -> Origin:
    return stack.enter_context(serve_directory(directory, garbage=garbage))


def mirror_of(repo: TufRepository, path: Path) -> Path:
    """A copy of the repository as it is now (later publishes do not reach it: stale)."""
    shutil.copytree(repo.directory, path)
    return path


def distributor(
    tmp_path: Path,
    repo: TufRepository,
    keyring: KeyRing,
    origins: list[str],
    clock: Clock | None = None,
) -> BundleDistributor:
    client = MultiOriginClient(
        origins, tmp_path / "client", repo.trusted_root(), TARGET, timeout_s=5
    )
    pdp = PolicyDecisionPoint(
        keyring, tmp_path / "pdp-cache", clock=clock or Clock(datetime.now(UTC))
    )
    return BundleDistributor(client, pdp)


def tree(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_only_the_timestamp_changes_everything_else_is_named_by_version_or_hash(
    repo: TufRepository, live_bundle_v11: Built
) -> None:
    before = tree(repo.directory)
    repo.publish(TARGET, live_bundle_v11.archive)
    after = tree(repo.directory)
    changed = {name for name in before if before[name] != after.get(name)}
    assert changed == {"metadata/timestamp.json"}
    assert f"targets/{live_bundle_v11.digest}.{TARGET}" in after
    assert {"metadata/2.targets.json", "metadata/3.targets.json"} <= set(after)
    repo.refresh_timestamp()
    assert {n for n in after if after[n] != tree(repo.directory)[n]} == {"metadata/timestamp.json"}


def test_fetch_verifies_and_activates(
    tmp_path: Path, repo: TufRepository, keyring: KeyRing, stack: ExitStack, live_bundle: Built
) -> None:
    good = start(stack, repo.directory)
    dist = distributor(tmp_path, repo, keyring, [good.url])
    result = dist.poll()
    assert result.outcome is PollOutcome.ACTIVATED
    assert dist.pdp.active is not None and dist.pdp.active.digest == live_bundle.digest
    assert dist.pdp.decide(ACME, "mc/residency", EU).allow
    assert dist.poll().outcome is PollOutcome.REFRESHED


def test_failover_past_a_down_and_a_garbage_origin(
    tmp_path: Path, repo: TufRepository, keyring: KeyRing, stack: ExitStack
) -> None:
    down = start(stack, repo.directory)
    down.stop()
    garbage = start(stack, repo.directory, garbage=True)
    good = start(stack, repo.directory)
    dist = distributor(tmp_path, repo, keyring, [down.url, garbage.url, good.url])
    result = dist.poll()
    assert result.outcome is PollOutcome.ACTIVATED and result.origin == good.url
    ranked = [h.base_url for h in dist.client.ranked()]
    assert ranked[0] == good.url  # healthy first; the failed ones wait out their cooldown
    assert dist.client.health[garbage.url].failures == 1
    assert dist.client.health[down.url].failures == 1


@pytest.mark.parametrize("tamper", ["repacked", "same_length"])
def test_tampered_bundle_on_a_mirror_is_detected_by_the_pinned_digest(
    tmp_path: Path,
    repo: TufRepository,
    keyring: KeyRing,
    stack: ExitStack,
    live_bundle: Built,
    tamper: str,
) -> None:
    evil = mirror_of(repo, tmp_path / "evil")
    target = evil / "targets" / f"{live_bundle.digest}.{TARGET}"
    if tamper == "repacked":
        files = read_archive(target.read_bytes())
        files["data.json"] = files["data.json"].replace(b"eu-west-1", b"us-east-1")
        target.write_bytes(write_archive(files))
        expected = "length"
    else:
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
        expected = "hash"
    evil_origin = start(stack, evil)
    dist = distributor(tmp_path, repo, keyring, [evil_origin.url])
    result = dist.poll()
    assert result.outcome is PollOutcome.UNREACHABLE
    assert expected in result.detail.lower()
    assert dist.pdp.status().state is PdpState.EMPTY
    assert not dist.pdp.decide(ACME, "mc/residency", EU).allow
    good = start(stack, repo.directory)
    dist.client = MultiOriginClient(
        [evil_origin.url, good.url], tmp_path / "client", repo.trusted_root(), TARGET
    )
    assert dist.poll().origin == good.url


def test_rollback_to_an_older_repository_state_is_refused(
    tmp_path: Path, repo: TufRepository, keyring: KeyRing, stack: ExitStack, live_bundle_v11: Built
) -> None:
    stale = mirror_of(repo, tmp_path / "stale")  # still serves the first bundle
    repo.publish(TARGET, live_bundle_v11.archive)
    good = start(stack, repo.directory)
    dist = distributor(tmp_path, repo, keyring, [good.url])
    assert dist.poll().outcome is PollOutcome.ACTIVATED
    stale_origin = start(stack, stale)
    dist.client = MultiOriginClient(
        [stale_origin.url], tmp_path / "client", repo.trusted_root(), TARGET
    )
    result = dist.poll()
    assert result.outcome is PollOutcome.UNREACHABLE
    assert "version" in result.detail.lower()
    assert dist.pdp.active is not None and dist.pdp.active.version == 11


def test_mix_and_match_snapshot_is_refused(
    tmp_path: Path, repo: TufRepository, keyring: KeyRing, stack: ExitStack, live_bundle_v11: Built
) -> None:
    old_snapshot = (repo.directory / "metadata" / "2.snapshot.json").read_bytes()
    repo.publish(TARGET, live_bundle_v11.archive)
    mixed = mirror_of(repo, tmp_path / "mixed")
    # The current timestamp with an older (validly signed) snapshot in the new one's place.
    (mixed / "metadata" / "3.snapshot.json").write_bytes(old_snapshot)
    origin = start(stack, mixed)
    dist = distributor(tmp_path, repo, keyring, [origin.url])
    result = dist.poll()
    assert result.outcome is PollOutcome.UNREACHABLE
    assert "BadVersionNumberError" in result.detail
    assert dist.pdp.active is None


def test_repository_signed_with_other_keys_is_refused(
    tmp_path: Path, repo: TufRepository, keyring: KeyRing, stack: ExitStack, live_bundle: Built
) -> None:
    impostor = TufRepository.create(tmp_path / "impostor")
    impostor.publish(TARGET, live_bundle.archive)
    origin = start(stack, impostor.directory)
    dist = distributor(tmp_path, repo, keyring, [origin.url])
    result = dist.poll()
    assert result.outcome is PollOutcome.UNREACHABLE
    assert "UnsignedMetadataError" in result.detail


def test_unsigned_bundle_published_through_tuf_is_quarantined(
    tmp_path: Path,
    repo: TufRepository,
    keyring: KeyRing,
    stack: ExitStack,
    live_bundle: Built,
    live_bundle_v11: Built,
) -> None:
    good = start(stack, repo.directory)
    dist = distributor(tmp_path, repo, keyring, [good.url])
    assert dist.poll().outcome is PollOutcome.ACTIVATED
    files = read_archive(live_bundle_v11.archive)
    files.pop(".signatures.json")
    unsigned = write_archive(files)
    repo.publish(TARGET, unsigned)
    result = dist.poll()
    assert result.outcome is PollOutcome.QUARANTINED and "signature" in result.detail
    digest = hashlib.sha256(unsigned).hexdigest()
    assert (tmp_path / "pdp-cache" / "quarantine" / f"{digest}.tar.gz").exists()
    assert dist.pdp.active is not None and dist.pdp.active.digest == live_bundle.digest


def test_frozen_timestamp_is_refused(
    tmp_path: Path, keyring: KeyRing, stack: ExitStack, live_bundle: Built
) -> None:
    past = datetime.now(UTC) - timedelta(hours=3)
    frozen = TufRepository.create(tmp_path / "frozen", clock=lambda: past)
    frozen.publish(TARGET, live_bundle.archive)  # its timestamp expired two hours ago
    origin = start(stack, frozen.directory)
    dist = distributor(tmp_path, frozen, keyring, [origin.url])
    result = dist.poll()
    assert result.outcome is PollOutcome.UNREACHABLE and "expired" in result.detail.lower()
    assert dist.pdp.status().state is PdpState.EMPTY


def test_all_origins_down_keeps_serving_until_metadata_expiry_then_fails_closed(
    tmp_path: Path, keyring: KeyRing, stack: ExitStack, live_bundle: Built
) -> None:
    repo_clock = Clock(datetime.now(UTC))
    repo = TufRepository.create(
        tmp_path / "repo", clock=repo_clock, expiries=Expiries(timestamp=timedelta(hours=1))
    )
    repo.publish(TARGET, live_bundle.archive)
    origin = start(stack, repo.directory)
    pdp_clock = Clock(datetime.now(UTC))
    dist = distributor(tmp_path, repo, keyring, [origin.url], clock=pdp_clock)
    assert dist.poll().outcome is PollOutcome.ACTIVATED
    origin.stop()
    with pytest.raises(AllOriginsFailed):
        dist.client.fetch()
    assert dist.poll().outcome is PollOutcome.UNREACHABLE
    assert dist.pdp.decide(ACME, "mc/residency", EU).allow  # within the timestamp's life
    pdp_clock.advance(timedelta(hours=2))
    status = dist.pdp.status()
    assert status.state is PdpState.STALE and "expired" in status.reason
    assert dist.pdp.decide(ACME, "mc/residency", EU).fail_closed
    # Recovery: the repository re-signs its timestamp and an origin comes back.
    repo_clock.advance(timedelta(hours=2))
    repo.refresh_timestamp()
    back = start(stack, repo.directory)
    dist.client = MultiOriginClient([back.url], tmp_path / "client", repo.trusted_root(), TARGET)
    assert dist.poll().outcome is PollOutcome.REFRESHED
    assert dist.pdp.status().state is PdpState.SERVING
    assert dist.pdp.decide(ACME, "mc/residency", EU).allow


async def test_the_service_polls_its_origins_and_serves_what_it_fetched(
    tmp_path: Path,
    repo: TufRepository,
    signing_key: SigningKey,
    stack: ExitStack,
    live_bundle: Built,
) -> None:
    down = start(stack, repo.directory)
    down.stop()
    good = start(stack, repo.directory)
    keys = tmp_path / "keys.json"
    keys.write_text(
        keyring_json([{"kid": signing_key.key_id, "pem": signing_key.public_pem().decode()}])
    )
    root = tmp_path / "root.json"
    root.write_bytes(repo.trusted_root())
    settings = EdgePolicySettings(
        cache_dir=tmp_path / "svc-cache",
        trusted_keys_file=keys,
        origins=[down.url, good.url],
        tuf_root_file=root,
        poll_interval_s=0.2,
    )
    app = await EdgePolicyApp.create(settings)
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while app.pdp.status().state is not PdpState.SERVING:
            assert asyncio.get_running_loop().time() < deadline, app.pdp.status()
            await asyncio.sleep(0.05)
        assert app.pdp.active is not None and app.pdp.active.digest == live_bundle.digest
        assert app.pdp.decide(ACME, "mc/residency", EU).allow
    finally:
        await app.close()
