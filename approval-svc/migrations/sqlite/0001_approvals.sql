-- Approval requests escalated by brokers, their votes, and revoked sessions.
CREATE TABLE requests (
    id TEXT PRIMARY KEY NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'executed', 'failed')),
    tool TEXT NOT NULL,
    args_json TEXT NOT NULL,
    args_hash TEXT NOT NULL,
    session_id TEXT NOT NULL,
    human TEXT NOT NULL,
    actors_json TEXT NOT NULL,
    rules_json TEXT NOT NULL,
    reason TEXT NOT NULL,
    risk TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    justification TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    decided_at_ms INTEGER,
    grant_id TEXT,
    grant_token TEXT,
    outcome TEXT NOT NULL DEFAULT ''
);

-- At most one open request per exact call of a session.
CREATE UNIQUE INDEX requests_one_pending
    ON requests (session_id, tool, args_hash) WHERE status = 'pending';
CREATE INDEX requests_status ON requests (status, created_at_ms);

CREATE TABLE votes (
    request_id TEXT NOT NULL REFERENCES requests (id),
    operator TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (request_id, operator)
);

CREATE TABLE revoked_sessions (
    session_id TEXT PRIMARY KEY NOT NULL,
    at_ms INTEGER NOT NULL,
    reason TEXT NOT NULL
);
