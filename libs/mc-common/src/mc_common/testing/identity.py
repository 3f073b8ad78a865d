"""A per-session test trust domain, so every test server serves, and every test client speaks,
real mTLS with SPIFFE SVIDs.

The plugin's `mc_trust_domain` fixture makes one CA per session; its autouse companion points
`MC_IDENTITY_*` at the SVID of `test-server`, so every `ServiceSettings` built in a test (and
every service process a test starts) serves mTLS as that workload. Clients call as the gateway
unless they say otherwise: `mc_trust_domain.channel(address)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from mc_common.identity import IdentitySettings, WorkloadIdentity
from mc_common.identity.ca import IssuedSvid, TrustDomainCA

TEST_TRUST_DOMAIN = "mc.test"
TEST_NAMESPACE = "mc"
TEST_SERVER = "test-server"
GATEWAY = "gateway"


class TestTrustDomain:
    """A CA for `mc.test` and SVID directories issued from it under `root`."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, root: Path, trust_domain: str = TEST_TRUST_DOMAIN) -> None:
        self.root = root
        self.trust_domain = trust_domain
        self.ca = TrustDomainCA.generate(trust_domain)
        self._identities: dict[str, WorkloadIdentity] = {}

    def svid_dir(self, service: str, **issue: Any) -> Path:
        """A directory holding a fresh SVID of `service` (re-issued on every call)."""
        directory = self.root / service
        self.ca.write_svid(directory, service, namespace=TEST_NAMESPACE, **issue)
        return directory

    def issue(self, service: str, **issue: Any) -> IssuedSvid:
        return self.ca.issue(service, namespace=TEST_NAMESPACE, **issue)

    def settings(self, service: str = TEST_SERVER, **overrides: Any) -> IdentitySettings:
        """Identity settings of `service` (its SVID issued on first use)."""
        directory = self.root / service
        if not directory.exists():
            self.svid_dir(service)
        fields: dict[str, Any] = {
            "trust_domain": self.trust_domain,
            "namespace": TEST_NAMESPACE,
            "svid_dir": directory,
            **overrides,
        }
        return IdentitySettings(**fields)

    def env(self, service: str = TEST_SERVER) -> dict[str, str]:
        """`MC_IDENTITY_*` for a process running as `service`."""
        settings = self.settings(service)
        return {
            "MC_IDENTITY_MODE": "mtls",
            "MC_IDENTITY_TRUST_DOMAIN": settings.trust_domain,
            "MC_IDENTITY_NAMESPACE": settings.namespace,
            "MC_IDENTITY_SVID_DIR": str(settings.svid_dir),
        }

    def identity(self, service: str) -> WorkloadIdentity:
        """The workload identity of `service` (one per service per session)."""
        if service not in self._identities:
            self._identities[service] = WorkloadIdentity.from_settings(self.settings(service))
        return self._identities[service]

    def channel(
        self,
        address: str,
        *,
        caller: str = GATEWAY,
        server: str = TEST_SERVER,
        options: Any = (),
    ) -> grpc.aio.Channel:
        """An asyncio mTLS channel to `address` as `caller`, expecting `server`."""
        return self.identity(caller).channel(address, server=server, options=options)

    def sync_channel(
        self, address: str, *, caller: str = GATEWAY, server: str = TEST_SERVER
    ) -> grpc.Channel:
        """A blocking mTLS channel to `address` as `caller`, expecting `server`."""
        return self.identity(caller).sync_channel(address, server=server)
