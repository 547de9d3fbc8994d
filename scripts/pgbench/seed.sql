-- Seeds a database migrated by `authd migrate` for refresh.sql and update.sql: one user and
-- 10,000 sessions (reset.sql gives them their refresh rows).
INSERT INTO users (id, email, password_hash, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000001', 'pgbench@example.com', 'unused', now(), now());

INSERT INTO sessions (id, user_id, created_at)
SELECT ('00000000-0000-0000-0001-' || lpad(to_hex(s), 12, '0'))::uuid,
       '00000000-0000-0000-0000-000000000001', now()
FROM generate_series(1, 10000) AS s;

VACUUM ANALYZE;
