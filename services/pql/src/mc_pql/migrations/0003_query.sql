-- PQL, the provenance query language (docs/pql.md): what its planner reads.
--
-- receipt_facts projects the queryable fields of each receipt from its signed statement, in
-- the same transaction as the receipt (an AFTER INSERT statement trigger), so the query side
-- never parses envelopes and the write side's code does not change. `keys` holds the tenant-
-- prefixed terms PQL's list fields and search match with `@>` on one GIN index, so a term
-- lookup reads only the caller's tenant's postings.
--
-- search_entries is the provenance search index (MC-PRX-931) over receipts, decisions and
-- executions, filled by triggers the same way.
--
-- query_tenant_versions counts writes per tenant; the query cache keys results by it, so a
-- new receipt, decision or execution invalidates that tenant's cached results on every replica.

CREATE TABLE receipt_facts (
    tenant          text        NOT NULL,
    sequence        bigint      NOT NULL,
    digest          text        NOT NULL,
    execution_id    text        NOT NULL,
    package_name    text        NOT NULL,
    package_version text        NOT NULL,
    package_digest  text        NOT NULL,
    region          text        NOT NULL,
    cost_micros     bigint      NOT NULL,
    currency        text        NOT NULL,
    steps           integer     NOT NULL,
    failed_steps    integer     NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    recorded_at     timestamptz NOT NULL,
    denied          boolean     NOT NULL,
    keys            text[]      NOT NULL,
    PRIMARY KEY (tenant, sequence)
);
CREATE INDEX receipt_facts_recent ON receipt_facts (tenant, recorded_at DESC);
CREATE INDEX receipt_facts_package ON receipt_facts (tenant, package_name, recorded_at DESC);
CREATE INDEX receipt_facts_execution ON receipt_facts (tenant, execution_id);
CREATE INDEX receipt_facts_digest ON receipt_facts (tenant, digest);
CREATE INDEX receipt_facts_keys ON receipt_facts USING gin (keys);

CREATE TABLE search_entries (
    tenant  text        NOT NULL,
    kind    text        NOT NULL CHECK (kind IN ('receipt', 'decision', 'execution')),
    ref     text        NOT NULL,
    at      timestamptz NOT NULL,
    title   text        NOT NULL,
    keys    text[]      NOT NULL,
    PRIMARY KEY (tenant, kind, ref)
);
CREATE INDEX search_entries_keys ON search_entries USING gin (keys);
CREATE INDEX search_entries_recent ON search_entries (tenant, at DESC);

CREATE TABLE query_tenant_versions (
    tenant  text   PRIMARY KEY,
    version bigint NOT NULL
);

CREATE TABLE saved_queries (
    tenant        text        NOT NULL,
    name          text        NOT NULL,
    query         text        NOT NULL,
    description   text        NOT NULL DEFAULT '',
    envelope      bytea       NOT NULL,
    signer_key_id text        NOT NULL,
    saved_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, name)
);

-- Free-text words of a string: lower-cased runs of letters and digits, at most 64 of them.
CREATE FUNCTION pql_words(value text) RETURNS SETOF text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT DISTINCT w FROM (
        SELECT m[1] AS w FROM regexp_matches(lower(coalesce(value, '')), '([[:alnum:]]+)', 'g') AS m
        LIMIT 64
    ) AS words WHERE length(w) BETWEEN 2 AND 64
$$;

-- The in-toto statement inside a stored DSSE envelope, or NULL when the envelope is not one
-- PQL can project (the receipt is still stored; reading it reports it as invalid). A receipt
-- write never fails because of its projection.
CREATE FUNCTION pql_statement(envelope bytea) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    s jsonb;
    p jsonb;
BEGIN
    s := convert_from(decode(convert_from(envelope, 'UTF8')::jsonb ->> 'payload', 'base64'),
                      'UTF8')::jsonb;
    p := s -> 'predicate';
    IF jsonb_typeof(p) <> 'object' OR jsonb_typeof(p -> 'steps') <> 'array'
       OR jsonb_typeof(p -> 'policy_decisions') <> 'array'
       OR jsonb_typeof(s -> 'subject') <> 'array'
       OR p -> 'package' ->> 'name' IS NULL OR p -> 'package' ->> 'version' IS NULL
       OR p -> 'package' ->> 'digest' IS NULL OR p ->> 'region' IS NULL
       OR p -> 'cost' ->> 'currency' IS NULL OR p -> 'cost' ->> 'amount_micros' IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM (p -> 'cost' ->> 'amount_micros')::bigint,
            (p -> 'timing' ->> 'started_at')::timestamptz,
            (p -> 'timing' ->> 'finished_at')::timestamptz,
            (SELECT bool_and((x ->> 'allow')::boolean)
               FROM jsonb_array_elements(p -> 'policy_decisions') AS x);
    RETURN s;
EXCEPTION WHEN others THEN
    RETURN NULL;
END;
$$;

CREATE FUNCTION pql_bump_versions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO query_tenant_versions AS v (tenant, version)
        SELECT DISTINCT tenant, 1 FROM new_rows
        ON CONFLICT (tenant) DO UPDATE SET version = v.version + 1;
    RETURN NULL;
END;
$$;

CREATE FUNCTION pql_receipt_facts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH statements AS (
        SELECT n.tenant, n.sequence, n.digest, n.execution_id, n.recorded_at,
               pql_statement(n.envelope) AS s
        FROM new_rows AS n
    ), facts AS (
        SELECT st.tenant, st.sequence, st.digest, st.execution_id, st.recorded_at,
               st.s -> 'predicate' AS p, st.s -> 'subject' AS subjects
        FROM statements AS st WHERE st.s IS NOT NULL
    ), projected AS (
        SELECT f.*,
            ARRAY(
                SELECT DISTINCT f.tenant || '|' || k FROM (
                    SELECT 'd:' || (x ->> 'rule') AS k
                        FROM jsonb_array_elements(f.p -> 'policy_decisions') AS x
                    UNION ALL SELECT 's:' || (x ->> 'name')
                        FROM jsonb_array_elements(f.p -> 'steps') AS x
                    UNION ALL SELECT 'h:' || (x -> 'digest' ->> 'sha256')
                        FROM jsonb_array_elements(f.subjects) AS x
                    UNION ALL SELECT 'h:' || f.digest
                    UNION ALL SELECT 'e:' || f.execution_id
                    UNION ALL SELECT 'p:' || (f.p -> 'package' ->> 'name')
                    UNION ALL SELECT 'w:' || w FROM pql_words(
                        concat_ws(' ', f.p -> 'package' ->> 'name', f.execution_id, f.p ->> 'region',
                                  (SELECT string_agg(x ->> 'name', ' ')
                                     FROM jsonb_array_elements(f.p -> 'steps') AS x),
                                  (SELECT string_agg(concat_ws(' ', x ->> 'rule', x ->> 'reason'), ' ')
                                     FROM jsonb_array_elements(f.p -> 'policy_decisions') AS x))
                    ) AS w
                ) AS terms WHERE k IS NOT NULL
            ) AS keys
        FROM facts AS f
    ), inserted AS (
        INSERT INTO receipt_facts (tenant, sequence, digest, execution_id, package_name,
            package_version, package_digest, region, cost_micros, currency, steps, failed_steps,
            started_at, finished_at, recorded_at, denied, keys)
        SELECT pr.tenant, pr.sequence, pr.digest, pr.execution_id,
            pr.p -> 'package' ->> 'name', pr.p -> 'package' ->> 'version',
            pr.p -> 'package' ->> 'digest', pr.p ->> 'region',
            (pr.p -> 'cost' ->> 'amount_micros')::bigint, pr.p -> 'cost' ->> 'currency',
            jsonb_array_length(pr.p -> 'steps'),
            (SELECT count(*) FROM jsonb_array_elements(pr.p -> 'steps') AS x
              WHERE x ->> 'status' = 'failed'),
            (pr.p -> 'timing' ->> 'started_at')::timestamptz,
            (pr.p -> 'timing' ->> 'finished_at')::timestamptz,
            pr.recorded_at,
            EXISTS (SELECT 1 FROM jsonb_array_elements(pr.p -> 'policy_decisions') AS x
                     WHERE NOT (x ->> 'allow')::boolean),
            pr.keys
        FROM projected AS pr
        RETURNING 1
    )
    INSERT INTO search_entries (tenant, kind, ref, at, title, keys)
        SELECT pr.tenant, 'receipt', pr.digest, pr.recorded_at,
               concat_ws(' ', pr.p -> 'package' ->> 'name', pr.p -> 'package' ->> 'version',
                         pr.execution_id),
               pr.keys
        FROM projected AS pr
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE FUNCTION pql_decision_entries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO search_entries (tenant, kind, ref, at, title, keys)
        SELECT n.tenant, 'decision', n.decision_id, n.decided_at,
               concat_ws(' ', n.policy, n.rule, CASE WHEN n.allow THEN 'allow' ELSE 'deny' END),
               ARRAY(SELECT DISTINCT n.tenant || '|' || k FROM (
                   SELECT 'd:' || n.rule AS k
                   UNION ALL SELECT 'e:' || n.execution_id WHERE n.execution_id <> ''
                   UNION ALL SELECT 'h:' || n.bundle_digest WHERE n.bundle_digest <> ''
                   UNION ALL SELECT 'w:' || w FROM pql_words(
                       concat_ws(' ', n.policy, n.rule, n.reason, n.execution_id)) AS w
               ) AS terms WHERE k IS NOT NULL AND k NOT IN ('d:'))
        FROM new_rows AS n
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE FUNCTION pql_execution_entries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO search_entries (tenant, kind, ref, at, title, keys)
        SELECT n.tenant, 'execution', n.execution_id, n.recorded_at,
               concat_ws(' ', n.package_name, n.package_version, n.status),
               ARRAY(SELECT DISTINCT n.tenant || '|' || k FROM (
                   SELECT 'e:' || n.execution_id AS k
                   UNION ALL SELECT 'p:' || n.package_name
                   UNION ALL SELECT 'h:' || n.package_digest WHERE n.package_digest <> ''
                   UNION ALL SELECT 'w:' || w FROM pql_words(
                       concat_ws(' ', n.package_name, n.execution_id, n.region, n.status)) AS w
               ) AS terms)
        FROM new_rows AS n
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE TRIGGER receipts_query_facts AFTER INSERT ON receipts
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pql_receipt_facts();
CREATE TRIGGER receipts_query_version AFTER INSERT ON receipts
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pql_bump_versions();
CREATE TRIGGER decisions_query_entries AFTER INSERT ON policy_decisions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pql_decision_entries();
CREATE TRIGGER decisions_query_version AFTER INSERT ON policy_decisions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pql_bump_versions();
CREATE TRIGGER executions_query_entries AFTER INSERT ON executions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pql_execution_entries();
CREATE TRIGGER executions_query_version AFTER INSERT ON executions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pql_bump_versions();
