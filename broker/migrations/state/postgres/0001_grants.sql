-- The brokers' shared state (PostgreSQL): grant redemptions. The primary
-- key makes a grant redeemable at most once across every replica; a
-- redemption is claimed before the call runs and marked done with its
-- result after.
CREATE TABLE grant_redemptions (
    nonce TEXT PRIMARY KEY NOT NULL,
    grant_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    redeemed_at_ms BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'done' CHECK (state IN ('claimed', 'done')),
    result_json TEXT,
    updated_at_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX grant_redemptions_request ON grant_redemptions (request_id, session_id);
