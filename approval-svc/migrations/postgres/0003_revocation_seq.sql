-- Revocations carry a monotonic sequence number, so brokers page through
-- them with a cursor that no clock can skew. A new one takes MAX + 1; the
-- unique index makes concurrent revocations commit in sequence order.
ALTER TABLE revoked_sessions ADD COLUMN seq BIGINT;
UPDATE revoked_sessions SET seq = numbered.n
    FROM (SELECT session_id, row_number() OVER (ORDER BY at_ms, session_id) AS n
          FROM revoked_sessions) AS numbered
    WHERE revoked_sessions.session_id = numbered.session_id;
CREATE UNIQUE INDEX revoked_sessions_seq ON revoked_sessions (seq);
