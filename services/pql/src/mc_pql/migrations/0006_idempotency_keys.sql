-- Idempotency keys of RecordReceipt(s): the key, the digest of the request it came with, and
-- how many receipts the request recorded, on the FIRST receipt of that request (its receipts
-- are consecutive in the chain). Written in the same statement as the receipts, so a retry
-- after a crash between commit and reply finds them; unique per tenant, so concurrent retries
-- on two replicas cannot both append.
ALTER TABLE receipts
    ADD COLUMN idempotency_key text,
    ADD COLUMN request_sha256 text,
    ADD COLUMN request_count integer;
CREATE UNIQUE INDEX receipts_idempotency_key ON receipts (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
