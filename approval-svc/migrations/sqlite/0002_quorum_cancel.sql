-- Quorum and reasons fixed per request when it is escalated, and the
-- `cancelled` terminal state. SQLite cannot change a CHECK constraint, so
-- both tables are rebuilt; the child table first, so that dropping the old
-- parent leaves no vote pointing at it, and renaming the new parent carries
-- the new child's reference along.
CREATE TABLE requests_v2 (
    id TEXT PRIMARY KEY NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'executed', 'failed', 'cancelled')),
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
    outcome TEXT NOT NULL DEFAULT '',
    -- Distinct approvals that approve the request.
    approvals_required INTEGER NOT NULL DEFAULT 1 CHECK (approvals_required >= 1),
    -- Whether approving it needs a reason (0 or 1).
    approve_reason_required INTEGER NOT NULL DEFAULT 0 CHECK (approve_reason_required IN (0, 1))
);

INSERT INTO requests_v2 (id, status, tool, args_json, args_hash, session_id, human, actors_json,
    rules_json, reason, risk, amount_cents, justification, created_at_ms, expires_at_ms,
    decided_at_ms, grant_id, grant_token, outcome)
SELECT id, status, tool, args_json, args_hash, session_id, human, actors_json,
    rules_json, reason, risk, amount_cents, justification, created_at_ms, expires_at_ms,
    decided_at_ms, grant_id, grant_token, outcome
FROM requests;

CREATE TABLE votes_v2 (
    request_id TEXT NOT NULL REFERENCES requests_v2 (id),
    operator TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (request_id, operator)
);

INSERT INTO votes_v2 (request_id, operator, decision, reason, at_ms)
SELECT request_id, operator, decision, reason, at_ms FROM votes ORDER BY at_ms, rowid;

DROP TABLE votes;
DROP TABLE requests;
ALTER TABLE requests_v2 RENAME TO requests;
ALTER TABLE votes_v2 RENAME TO votes;

-- At most one open request per exact call of a session.
CREATE UNIQUE INDEX requests_one_pending
    ON requests (session_id, tool, args_hash) WHERE status = 'pending';
CREATE INDEX requests_status ON requests (status, created_at_ms);
CREATE INDEX requests_session ON requests (session_id, status);
