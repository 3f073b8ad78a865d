-- Provenance store: executions, append-only signed receipts (a hash chain per tenant),
-- policy decisions, and tenant signing keys. Every table is keyed by tenant first.

CREATE TABLE executions (
    tenant          text        NOT NULL,
    execution_id    text        NOT NULL,
    package_name    text        NOT NULL,
    package_version text        NOT NULL,
    package_digest  text        NOT NULL DEFAULT '',
    region          text        NOT NULL DEFAULT '',
    status          text        NOT NULL DEFAULT '',
    started_at      timestamptz,
    finished_at     timestamptz,
    labels          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    content_sha256  text        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, execution_id)
);
CREATE INDEX executions_recent ON executions (tenant, recorded_at DESC, execution_id DESC);

CREATE TABLE receipts (
    tenant          text        NOT NULL,
    sequence        bigint      NOT NULL CHECK (sequence >= 1),
    digest          text        NOT NULL CHECK (digest ~ '^[0-9a-f]{64}$'),
    previous_digest text        NOT NULL,
    execution_id    text        NOT NULL,
    envelope        bytea       NOT NULL,
    signer_key_id   text        NOT NULL,
    client_envelope bytea,
    client_key_id   text,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, sequence),
    UNIQUE (tenant, digest)
);
CREATE INDEX receipts_by_execution ON receipts (tenant, execution_id, sequence);

-- Receipts are append-only: the database itself refuses UPDATE, DELETE and TRUNCATE.
CREATE FUNCTION refuse_receipt_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'receipts are append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER receipts_no_update_delete BEFORE UPDATE OR DELETE ON receipts
    FOR EACH ROW EXECUTE FUNCTION refuse_receipt_change();
CREATE TRIGGER receipts_no_truncate BEFORE TRUNCATE ON receipts
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_receipt_change();

CREATE TABLE policy_decisions (
    tenant         text        NOT NULL,
    decision_id    text        NOT NULL,
    execution_id   text        NOT NULL DEFAULT '',
    policy         text        NOT NULL,
    bundle_digest  text        NOT NULL DEFAULT '',
    rule           text        NOT NULL DEFAULT '',
    allow          boolean     NOT NULL,
    reason         text        NOT NULL DEFAULT '',
    remediation    text        NOT NULL DEFAULT '',
    decided_at     timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, decision_id)
);
CREATE INDEX policy_decisions_recent ON policy_decisions (tenant, decided_at DESC, decision_id DESC);
CREATE INDEX policy_decisions_by_execution ON policy_decisions (tenant, execution_id);

CREATE TABLE signing_keys (
    key_id         text        PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{64}$'),
    tenant         text        NOT NULL,
    public_key_pem text        NOT NULL,
    registered_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz
);
CREATE INDEX signing_keys_by_tenant ON signing_keys (tenant);
