"""Workload identity inside the fleet: SPIFFE X.509 SVIDs, mTLS credentials, peer authorization.

- `IdentitySettings`: where the SVID files are, the trust domain, the allow lists
  (`MC_IDENTITY_*`).
- `WorkloadIdentity`: this workload's SVID, re-read when its files change; binds server ports
  (mTLS requiring client certificates) and opens client channels (`channel()`, `sync_channel()`).
- `PeerPolicy`: the server-side rules of who may call what and assert which tenant/principal.
- `mc_common.identity.ca`: a small CA for `maestro dev up` and tests.
"""

from __future__ import annotations

from mc_common.identity.authz import PeerPolicy, peer_spiffe_id
from mc_common.identity.credentials import (
    RotatingChannel,
    WorkloadIdentity,
    channel_credentials,
    server_credentials,
)
from mc_common.identity.ids import (
    IdentityError,
    parse_id,
    resolve_caller,
    server_name,
    workload_id,
)
from mc_common.identity.settings import IdentitySettings, is_loopback
from mc_common.identity.source import SvidMaterial, SvidSource

__all__ = [
    "IdentityError",
    "IdentitySettings",
    "PeerPolicy",
    "RotatingChannel",
    "SvidMaterial",
    "SvidSource",
    "WorkloadIdentity",
    "channel_credentials",
    "is_loopback",
    "parse_id",
    "peer_spiffe_id",
    "resolve_caller",
    "server_credentials",
    "server_name",
    "workload_id",
]
