-- Before each pgbench run: every session's refresh row at generation 1. pgbench client c
-- (from 0) rotates session c + 1; a secret's hash is sha256('<session number>-<generation>').
DELETE FROM refresh_tokens;
INSERT INTO refresh_tokens (session_id, user_id, session_started_at, generation, secret_hash,
  rotated_at, expires_at, retried)
SELECT ('00000000-0000-0000-0001-' || lpad(to_hex(s), 12, '0'))::uuid,
       '00000000-0000-0000-0000-000000000001', now(), 1,
       sha256(convert_to(s || '-1', 'UTF8')), now(), now() + interval '7 days', FALSE
FROM generate_series(1, 10000) AS s;

VACUUM ANALYZE refresh_tokens;
