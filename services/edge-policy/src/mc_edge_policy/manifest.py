"""The edge policy service's declaration (entry point `mc.services: edge-policy`); see
docs/adding-a-service.md."""

from __future__ import annotations

from collections.abc import Mapping

from mc_common.manifest import DevContext, Infra, ServiceManifest
from mc_edge_policy.settings import EdgePolicySettings


def dev_env(context: DevContext) -> Mapping[str, str]:
    """A dev signing key and key ring, a bundle of the seed policies, and the broker."""
    from mc_edge_policy.devbundle import prepare_dev_bundle

    paths = prepare_dev_bundle(context.data_dir / "edge-policy")
    return {
        "CACHE_DIR": str(paths.cache_dir),
        "TRUSTED_KEYS_FILE": str(paths.keyring),
        "BUNDLE_FILE": str(paths.bundle),
        "KAFKA_BOOTSTRAP": context.kafka_bootstrap,
    }


MANIFEST = ServiceManifest(
    name="edge-policy",
    module="mc_edge_policy.main",
    command="mc-edge-policy",
    settings=EdgePolicySettings,
    grpc_port=7304,
    metrics_port=9304,
    api="`mc.policy.v1.PolicyService`: Evaluate, Explain, status of the signed-bundle PDP",
    needs=frozenset({Infra.KAFKA}),
    dev_env=dev_env,
)
