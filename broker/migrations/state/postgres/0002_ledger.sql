-- Budgets over time (shared by every broker replica): what each call the gate let run consumed, per budget
-- and key (e.g. `refunded_today` / `human:alice`), summed over a sliding
-- window at the next decision.
CREATE TABLE budget_uses (
    id TEXT PRIMARY KEY NOT NULL,
    budget TEXT NOT NULL,
    key TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    amount BIGINT NOT NULL,
    session_id TEXT NOT NULL,
    tool TEXT NOT NULL
);
CREATE INDEX budget_uses_window ON budget_uses (budget, key, at_ms);
-- Sessions that received outsiders' content (a tool marked untrusted_output).
CREATE TABLE session_taint (
    session_id TEXT PRIMARY KEY NOT NULL,
    tool TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
