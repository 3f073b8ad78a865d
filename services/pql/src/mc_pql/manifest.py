"""The provenance service's declaration (entry point `mc.services: pql`); see
docs/adding-a-service.md."""

from __future__ import annotations

from collections.abc import Mapping

from mc_common.manifest import DevContext, Infra, ServiceManifest
from mc_pql.settings import PqlSettings


def dev_env(context: DevContext) -> Mapping[str, str]:
    """A signing key generated once into the data dir, the dev database and the broker."""
    from mc_common.signing import PemSigner

    key = context.data_dir / "pql-signing-key.pem"
    if not key.exists():
        PemSigner.generate().save(key)
    checkpoint_key = context.data_dir / "pql-checkpoint-key.pem"
    if not checkpoint_key.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        checkpoint_key.write_bytes(
            Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        checkpoint_key.chmod(0o600)
    return {
        "POSTGRES_DSN": context.postgres_dsn,
        "SIGNING_KEY_PATH": str(key),
        "CHECKPOINT_KEY_PATH": str(checkpoint_key),
        "KAFKA_BOOTSTRAP": context.kafka_bootstrap,
    }


MANIFEST = ServiceManifest(
    name="pql",
    module="mc_pql.main",
    command="mc-pql",
    settings=PqlSettings,
    grpc_port=7301,
    metrics_port=9301,
    api="`mc.pql.v1.ProvenanceService`: record/get/list/verify receipts, executions, decisions; "
    "`QueryService`: PQL queries, search, saved queries ([docs/pql.md](docs/pql.md)); "
    "`ReceiptLogService`: checkpoints, proofs, audits, keys",
    needs=frozenset({Infra.POSTGRES, Infra.KAFKA}),
    dev_env=dev_env,
)
