-- The decisions consumer's dedup table (mc_common.events.idempotency), created here rather
-- than at start-up, where replicas raced on CREATE TABLE. `body_sha256` lets a redelivery with
-- the same event id and another body be told from a plain redelivery (dead-lettered as
-- CONFLICT). Deployments that created the table at start-up get the new column and index.
CREATE TABLE IF NOT EXISTS processed_events (
    consumer     text        NOT NULL,
    event_id     text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
ALTER TABLE processed_events ADD COLUMN IF NOT EXISTS body_sha256 text;
CREATE INDEX IF NOT EXISTS processed_events_age ON processed_events (consumer, processed_at);
