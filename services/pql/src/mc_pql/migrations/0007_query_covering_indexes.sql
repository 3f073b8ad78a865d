-- PQL reads one tenant's rows in one time window. A tenant's rows are spread over the whole
-- table (tenants write interleaved), so a plain (tenant, time) index sends every row of the
-- window to a random heap page: at 10M receipts a 30-day aggregate of a large tenant was
-- disk-bound. These covering indexes carry the columns the query shapes group, filter and
-- aggregate on, so those shapes are index-only scans (see docs/pql.md, Performance).
CREATE INDEX IF NOT EXISTS receipt_facts_window ON receipt_facts (tenant, recorded_at DESC)
    INCLUDE (package_name, package_version, region, currency, cost_micros, denied,
             execution_id, steps, failed_steps, started_at, finished_at);
DROP INDEX IF EXISTS receipt_facts_recent;  -- a prefix of receipt_facts_window
CREATE INDEX IF NOT EXISTS policy_decisions_window ON policy_decisions (tenant, decided_at DESC)
    INCLUDE (rule, allow, execution_id, policy);
