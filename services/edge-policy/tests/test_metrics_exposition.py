"""The edge policy service's /metrics passes Prometheus' linter and shows a stale PDP."""

from __future__ import annotations

import urllib.request
from datetime import timedelta
from pathlib import Path

from edge_support import BUILD_TIME, Clock
from prometheus_client import generate_latest

from mc.policy.v1 import policy_service_pb2 as svc
from mc.policy.v1 import policy_service_pb2_grpc as svc_grpc
from mc_common.server import start_server
from mc_common.testing.identity import TestTrustDomain
from mc_common.testing.infra import free_port
from mc_common.testing.promtool import promtool_problems
from mc_edge_policy.app import EdgePolicyApp
from mc_edge_policy.builder import BuiltBundle
from mc_edge_policy.keys import keyring_json
from mc_edge_policy.metrics import pdp_registry
from mc_edge_policy.pdp import PolicyDecisionPoint
from mc_edge_policy.settings import EdgePolicySettings
from mc_edge_policy.signatures import KeyRing, SigningKey


async def test_exposition_passes_promtool(
    tmp_path: Path,
    signing_key: SigningKey,
    live_bundle: BuiltBundle,
    mc_trust_domain: TestTrustDomain,
) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(
        keyring_json([{"kid": signing_key.key_id, "pem": signing_key.public_pem().decode()}])
    )
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(live_bundle.archive)
    settings = EdgePolicySettings(
        cache_dir=tmp_path / "cache",
        trusted_keys_file=keys,
        bundle_file=bundle,
        metrics_port=free_port(),
    )
    app = await EdgePolicyApp.create(settings)
    running = await start_server(settings, app.spec())
    try:
        async with mc_trust_domain.channel(running.address) as channel:
            stub = svc_grpc.PolicyServiceStub(channel)
            await stub.Evaluate(
                svc.EvaluateRequest(package="mc/residency"), metadata=[("x-mc-tenant", "acme")]
            )
        url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            exposition = reply.read()
    finally:
        await running.stop(0)
        await app.close()
    assert promtool_problems(exposition) == []
    text = exposition.decode()
    assert 'mc_edge_policy_bundle_state{state="serving"} 1.0' in text
    assert "mc_edge_policy_bundle_version 10.0" in text
    assert 'grpc_service="mc.policy.v1.PolicyService"' in text


def test_stale_pdp_shows_in_metrics(seed_v1: BuiltBundle, keyring: KeyRing, tmp_path: Path) -> None:
    clock = Clock(BUILD_TIME + timedelta(hours=1))
    pdp = PolicyDecisionPoint(keyring, tmp_path, clock=clock)
    pdp.activate(seed_v1.archive)
    clock.advance(timedelta(days=8))
    text = generate_latest(pdp_registry(pdp)).decode()
    assert 'mc_edge_policy_bundle_state{state="stale"} 1.0' in text
    assert 'mc_edge_policy_bundle_state{state="serving"} 0.0' in text
