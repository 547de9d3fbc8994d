-- authd's Refresh statement, as src/store/rotation.rs writes it (ROTATE), for one session per
-- pgbench client. Run with -M prepared (as sqlx does) and -D gen=1 (the seeded generation):
-- each transaction names the generation and secret the previous one left, as a client
-- presenting its newest token does; \gset fails the client if a rotation ever matches nothing.
UPDATE refresh_tokens SET generation = generation + 1,
    secret_hash = sha256(convert_to((:client_id + 1) || '-' || (:gen + 1), 'UTF8')),
    rotated_at = now(), expires_at = now() + interval '7 days', retried = FALSE,
    refreshed_address = '198.51.100.7', refreshed_user_agent = 'pgbench'
  WHERE session_id = ('00000000-0000-0000-0001-' || lpad(to_hex(:client_id + 1), 12, '0'))::uuid
    AND generation = :gen
    AND secret_hash = sha256(convert_to((:client_id + 1) || '-' || :gen, 'UTF8'))
    AND expires_at > now()
    AND session_started_at > now() - interval '30 days'
    AND (SELECT s.revoked_at IS NULL FROM sessions s
      WHERE s.id = refresh_tokens.session_id)
    AND (SELECT u.disabled_at IS NULL FROM users u
      WHERE u.id = refresh_tokens.user_id)
  RETURNING generation AS gen, user_id,
    (SELECT u.email FROM users u WHERE u.id = refresh_tokens.user_id) AS email,
    session_started_at, expires_at \gset
