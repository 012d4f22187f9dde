-- The broker's own state: redeemed grant nonces. The primary key makes a
-- grant redeemable at most once, whatever the number of concurrent calls.
CREATE TABLE grant_redemptions (
    nonce TEXT PRIMARY KEY NOT NULL,
    grant_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    redeemed_at_ms INTEGER NOT NULL
);
