-- The example backend on PostgreSQL: a subscription business's accounts,
-- orders, refunds, plan changes and support articles (the same tables as
-- the SQLite migrations end with).
CREATE TABLE accounts (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    region TEXT NOT NULL,
    plan TEXT NOT NULL CHECK (plan IN ('basic', 'standard', 'premium', 'enterprise'))
);

CREATE TABLE orders (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    description TEXT NOT NULL,
    amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
    refunded_cents BIGINT NOT NULL DEFAULT 0 CHECK (refunded_cents >= 0 AND refunded_cents <= amount_cents),
    created_at TEXT NOT NULL
);

CREATE TABLE refunds (
    id TEXT PRIMARY KEY NOT NULL,
    order_id TEXT NOT NULL REFERENCES orders (id),
    amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
    session_id TEXT NOT NULL,
    human TEXT NOT NULL,
    grant_id TEXT UNIQUE,
    created_at_ms BIGINT NOT NULL,
    idempotency_key TEXT
);
CREATE UNIQUE INDEX refunds_idempotency ON refunds (human, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE plan_changes (
    id TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    old_plan TEXT NOT NULL,
    new_plan TEXT NOT NULL,
    session_id TEXT NOT NULL,
    human TEXT NOT NULL,
    grant_id TEXT UNIQUE,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE documents (
    id TEXT PRIMARY KEY NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL
);
