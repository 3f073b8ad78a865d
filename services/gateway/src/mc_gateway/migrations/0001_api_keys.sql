-- API keys of the gateway. Only a hash of each key is stored; the secret is shown once.
CREATE TABLE api_keys (
    key_id           text        PRIMARY KEY,
    tenant           text        NOT NULL,
    principal        text        NOT NULL,
    display_name     text        NOT NULL DEFAULT '',
    secret_hash      bytea       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expire_at        timestamptz,
    revoked_at       timestamptz,
    successor_key_id text
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at DESC, key_id DESC);
