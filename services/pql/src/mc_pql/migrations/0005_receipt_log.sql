-- The per-tenant Merkle log over receipts (RFC 9162; see mc_pql.log and ADR 0025).
--
-- Leaf i (0-based) of a tenant's tree is receipt sequence i + 1, with leaf hash
-- SHA-256(0x00 || the 32 bytes of its digest). `receipt_log` has one row per receipt, written in
-- the same statement as the receipt: `nodes` holds the leaf hash followed by the hashes of the
-- full subtrees that leaf completes (entry k = full node (level k, index i >> k)), so any root,
-- inclusion or consistency proof reads O(log n) rows by primary key.
--
-- The log, not `receipts`, is where chain heads are read from (`chain_lock` below), and both
-- are append-only: a sequence number stays taken even if its receipt row vanishes, so it is
-- never issued again with another digest. Signed checkpoints are kept in `log_checkpoints`.

CREATE TABLE receipt_log (
    tenant   text   NOT NULL,
    sequence bigint NOT NULL CHECK (sequence >= 1),
    digest   text   NOT NULL CHECK (digest ~ '^[0-9a-f]{64}$'),
    nodes    bytea  NOT NULL CHECK (length(nodes) >= 32 AND length(nodes) % 32 = 0),
    PRIMARY KEY (tenant, sequence)
);

CREATE TABLE log_checkpoints (
    tenant    text        NOT NULL,
    size      bigint      NOT NULL CHECK (size >= 0),
    root      bytea       NOT NULL CHECK (length(root) = 32),
    note      text        NOT NULL,
    issued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, size)
);

CREATE TRIGGER receipt_log_no_update_delete BEFORE UPDATE OR DELETE ON receipt_log
    FOR EACH ROW EXECUTE FUNCTION refuse_receipt_change();
CREATE TRIGGER receipt_log_no_truncate BEFORE TRUNCATE ON receipt_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_receipt_change();
CREATE TRIGGER log_checkpoints_no_update_delete BEFORE UPDATE OR DELETE ON log_checkpoints
    FOR EACH ROW EXECUTE FUNCTION refuse_receipt_change();
CREATE TRIGGER log_checkpoints_no_truncate BEFORE TRUNCATE ON log_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_receipt_change();

-- Receipts recorded before this migration join the log in sequence order (a gap stops the
-- tenant's backfill: that chain is already broken and VerifyChain reports it).
DO $$
DECLARE
    t text;
    r record;
    frontier bytea[];
    h bytea;
    nodes bytea;
    i bigint;
    level int;
    expected bigint;
BEGIN
    FOR t IN SELECT DISTINCT tenant FROM receipts LOOP
        frontier := ARRAY[]::bytea[];
        expected := 1;
        FOR r IN SELECT sequence, digest FROM receipts WHERE tenant = t ORDER BY sequence LOOP
            EXIT WHEN r.sequence <> expected;
            h := sha256('\x00'::bytea || decode(r.digest, 'hex'));
            nodes := h;
            i := r.sequence - 1;
            level := 0;
            -- frontier[k + 1] holds the newest full node of level k.
            WHILE i % 2 = 1 LOOP
                h := sha256('\x01'::bytea || frontier[level + 1] || h);
                nodes := nodes || h;
                i := i / 2;
                level := level + 1;
            END LOOP;
            frontier[level + 1] := h;
            INSERT INTO receipt_log (tenant, sequence, digest, nodes)
                VALUES (t, r.sequence, r.digest, nodes);
            expected := expected + 1;
        END LOOP;
    END LOOP;
END;
$$;

-- Chain heads now come from the log (same signature and lock key as 0002).
CREATE OR REPLACE FUNCTION chain_lock(tenants text[], head_sequences bigint[], head_digests text[])
RETURNS TABLE (moved_tenant text, moved_sequence bigint, moved_digest text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY tenants LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended('mc.pql.chain:' || name, 0));
    END LOOP;
    RETURN QUERY
        SELECT expected.tenant, head.sequence, head.digest
        FROM unnest(tenants, head_sequences, head_digests)
            AS expected (tenant, sequence, digest)
        LEFT JOIN LATERAL (
            SELECT l.sequence, l.digest FROM receipt_log AS l
            WHERE l.tenant = expected.tenant
            ORDER BY l.sequence DESC LIMIT 1
        ) AS head ON true
        WHERE (head.sequence, head.digest) IS DISTINCT FROM (expected.sequence, expected.digest);
END;
$$;

-- A signing key row changes once, to record its revocation (the runtime role may update only
-- `revoked_at`; this refuses un-revoking or moving the time).
CREATE FUNCTION refuse_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.revoked_at IS NOT NULL
        OR (NEW.key_id, NEW.tenant, NEW.public_key_pem, NEW.registered_at)
            IS DISTINCT FROM (OLD.key_id, OLD.tenant, OLD.public_key_pem, OLD.registered_at)
    THEN
        RAISE EXCEPTION 'signing keys change only to be revoked'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER signing_keys_revoke_only BEFORE UPDATE ON signing_keys
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION refuse_key_change();
