-- authd's Refresh transaction, statement for statement (Store::rotate_refresh_token): claim
-- the presented token, read it, read its session, extend the session while it is alive, read
-- the user, insert the successor. Run with -M prepared, as sqlx does. See BENCHMARKS.md.
\set t random(1, 1000000)
BEGIN;
UPDATE refresh_tokens SET used_at = now()
  WHERE token_hash = sha256(convert_to(:t::text, 'UTF8')) AND used_at IS NULL AND expires_at > now();
SELECT id AS token_id, session_id FROM refresh_tokens
  WHERE token_hash = sha256(convert_to(:t::text, 'UTF8')) \gset
SELECT user_id, created_at FROM sessions WHERE id = :session_id \gset
UPDATE sessions SET last_refreshed_at = now(), expires_at = now() + interval '7 days'
  WHERE id = :session_id AND revoked_at IS NULL AND expires_at > now();
SELECT email FROM users WHERE id = :user_id \gset
INSERT INTO refresh_tokens (id, session_id, parent_id, token_hash, created_at, expires_at)
  VALUES (gen_random_uuid(), :session_id, :token_id,
          sha256(convert_to(gen_random_uuid()::text, 'UTF8')), now(), now() + interval '7 days');
COMMIT;
