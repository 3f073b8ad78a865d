"""Fixtures of the edge-policy tests: signing keys and bundles built from the seed policies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from edge_support import BUILD_TIME, Built, build_seed

from mc_edge_policy.signatures import KeyRing, SigningKey


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    return SigningKey.generate("mc-test-1")


@pytest.fixture(scope="session")
def keyring(signing_key: SigningKey) -> KeyRing:
    return KeyRing([signing_key.verification_key()])


@pytest.fixture(scope="session")
def seed_v1(signing_key: SigningKey, keyring: KeyRing) -> Built:
    return build_seed(signing_key, keyring, version=1)


@pytest.fixture(scope="session")
def seed_v2(signing_key: SigningKey, keyring: KeyRing) -> Built:
    return build_seed(signing_key, keyring, version=2)


@pytest.fixture(scope="session")
def live_bundle(signing_key: SigningKey, keyring: KeyRing) -> Built:
    """A bundle valid now (for components on the real clock: the service, TUF)."""
    return build_seed(signing_key, keyring, version=10, when=datetime.now(UTC))


@pytest.fixture(scope="session")
def live_bundle_v11(signing_key: SigningKey, keyring: KeyRing) -> Built:
    return build_seed(signing_key, keyring, version=11, when=datetime.now(UTC))


@pytest.fixture
def now() -> datetime:
    return BUILD_TIME + timedelta(hours=1)
