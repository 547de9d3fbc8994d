-- Seeds a database migrated by `authd migrate` for refresh.sql: one user, 10,000 sessions
-- and 1,000,000 unused refresh tokens whose hashes are sha256 of their number.
INSERT INTO users (id, email, password_hash, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000001', 'pgbench@example.com', 'unused', now(), now());

INSERT INTO sessions (id, user_id, created_at, expires_at, last_refreshed_at)
SELECT ('00000000-0000-0000-0001-' || lpad(to_hex(s), 12, '0'))::uuid,
       '00000000-0000-0000-0000-000000000001', now(), now() + interval '7 days', now()
FROM generate_series(1, 10000) AS s;

INSERT INTO refresh_tokens (id, session_id, parent_id, token_hash, created_at, expires_at)
SELECT gen_random_uuid(),
       ('00000000-0000-0000-0001-' || lpad(to_hex(1 + t % 10000), 12, '0'))::uuid,
       NULL, sha256(convert_to(t::text, 'UTF8')), now(), now() + interval '7 days'
FROM generate_series(1, 1000000) AS t;

VACUUM ANALYZE;
