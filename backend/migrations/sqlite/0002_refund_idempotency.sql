-- A refund may carry an idempotency key: a retry with the same key (by the
-- same human) returns the first refund instead of refunding again.
ALTER TABLE refunds ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX refunds_idempotency ON refunds (human, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
