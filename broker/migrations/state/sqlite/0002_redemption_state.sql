-- A redemption is claimed before the call runs and marked done with its
-- result after, so a status check can return the result again and a claim
-- left by a crashed broker can be taken over while the grant is valid.
ALTER TABLE grant_redemptions ADD COLUMN state TEXT NOT NULL DEFAULT 'done'
    CHECK (state IN ('claimed', 'done'));
ALTER TABLE grant_redemptions ADD COLUMN result_json TEXT;
ALTER TABLE grant_redemptions ADD COLUMN updated_at_ms INTEGER NOT NULL DEFAULT 0;
CREATE INDEX grant_redemptions_request ON grant_redemptions (request_id, session_id);
