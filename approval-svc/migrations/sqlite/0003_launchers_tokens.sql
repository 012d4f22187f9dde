-- Sessions started by launchers (a launcher may revoke only its own), and
-- launcher and operator credentials revoked by token id before they expire.
CREATE TABLE launched_sessions (
    session_id TEXT PRIMARY KEY NOT NULL,
    launcher TEXT NOT NULL,
    human TEXT NOT NULL,
    agent TEXT NOT NULL,
    issued_at_ms INTEGER NOT NULL
);

CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY NOT NULL,
    reason TEXT NOT NULL,
    by_operator TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
