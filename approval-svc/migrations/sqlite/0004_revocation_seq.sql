-- Revocations carry a monotonic sequence number, so brokers page through
-- them with a cursor that no clock can skew.
ALTER TABLE revoked_sessions ADD COLUMN seq INTEGER;
UPDATE revoked_sessions SET seq = rowid;
CREATE UNIQUE INDEX revoked_sessions_seq ON revoked_sessions (seq);
