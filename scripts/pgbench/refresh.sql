-- authd's Refresh transaction, statement for statement (Store::rotate_refresh_token): claim
-- the presented token (returning its row), read its session with the user, extend the session
-- while it is alive, insert the successor. Run with -M prepared, as sqlx does. See
-- BENCHMARKS.md. The claim leaves out authd's `used_at IS NULL`: a token drawn twice then
-- goes through the whole transaction instead of ending the client with an empty \gset.
\set t random(1, 1000000)
BEGIN;
UPDATE refresh_tokens SET used_at = now()
  WHERE token_hash = sha256(convert_to(:t::text, 'UTF8')) AND expires_at > now()
  RETURNING id AS token_id, session_id \gset
SELECT s.user_id, s.created_at, u.email FROM sessions s LEFT JOIN users u ON u.id = s.user_id
  WHERE s.id = :session_id \gset
UPDATE sessions SET last_refreshed_at = now(), expires_at = now() + interval '7 days'
  WHERE id = :session_id AND revoked_at IS NULL AND expires_at > now();
INSERT INTO refresh_tokens (id, session_id, parent_id, token_hash, created_at, expires_at)
  VALUES (gen_random_uuid(), :session_id, :token_id,
          sha256(convert_to(gen_random_uuid()::text, 'UTF8')), now(), now() + interval '7 days');
COMMIT;
