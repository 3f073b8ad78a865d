"""The provenance service's declaration (entry point `mc.services: pql`); see
docs/adding-a-service.md."""

from __future__ import annotations

from collections.abc import Mapping

from mc_common.manifest import DevContext, Infra, ServiceManifest
from mc_pql.settings import PqlSettings


def dev_env(context: DevContext) -> Mapping[str, str]:
    """Signing and checkpoint keys generated once into the data dir, the dev database (owner
    and runtime roles) and the broker."""
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
        **_database_roles(context.postgres_dsn),
        "SIGNING_KEY_PATH": str(key),
        "CHECKPOINT_KEY_PATH": str(checkpoint_key),
        "KAFKA_BOOTSTRAP": context.kafka_bootstrap,
    }


DEV_RUNTIME_ROLE = "mc_pql_app"


def _database_roles(owner_dsn: str) -> Mapping[str, str]:
    """Production's two roles in the dev fleet too (ADR 0026): migrations as the owner, the
    service as `mc_pql_app`, a login role created here that owns nothing (local trust auth)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (DEV_RUNTIME_ROLE,)
        ).fetchone()
        if exists is None:
            try:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(DEV_RUNTIME_ROLE))
                )
            except psycopg.errors.DuplicateObject:
                pass  # created meanwhile by another fleet
    return {
        "MIGRATION_DSN": owner_dsn,
        "POSTGRES_DSN": make_conninfo(owner_dsn, user=DEV_RUNTIME_ROLE),
        "RUNTIME_ROLE": DEV_RUNTIME_ROLE,
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
