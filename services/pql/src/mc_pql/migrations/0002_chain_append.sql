-- Appending to receipt chains in one statement. The service signs receipts against the chain
-- heads it expects (the ones its last append left); one statement then calls `chain_lock`,
-- which takes the tenants' advisory locks (held to commit, as before: replicas serialize per
-- tenant) and returns the heads that are not the expected ones, and inserts the receipts only
-- if there are none (see mc_pql.chain_store). If another writer moved a head, the caller
-- signs again from the returned heads.
--
-- The lock key is the one every version of the service uses: never change it. Each statement
-- of a VOLATILE function takes a fresh snapshot, so the heads are read after the locks are held.

CREATE FUNCTION chain_lock(tenants text[], head_sequences bigint[], head_digests text[])
RETURNS TABLE (moved_tenant text, moved_sequence bigint, moved_digest text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    name text;
BEGIN
    -- In the given order: callers sort tenants, so concurrent writers never deadlock.
    FOREACH name IN ARRAY tenants LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended('mc.pql.chain:' || name, 0));
    END LOOP;
    RETURN QUERY
        SELECT expected.tenant, head.sequence, head.digest
        FROM unnest(tenants, head_sequences, head_digests)
            AS expected (tenant, sequence, digest)
        LEFT JOIN LATERAL (
            SELECT r.sequence, r.digest FROM receipts AS r
            WHERE r.tenant = expected.tenant
            ORDER BY r.sequence DESC LIMIT 1
        ) AS head ON true
        WHERE (head.sequence, head.digest) IS DISTINCT FROM (expected.sequence, expected.digest);
END;
$$;
