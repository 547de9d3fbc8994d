-- The floor the Refresh target is measured against: a single-row conditional UPDATE of the
-- same table, nothing else. Run as refresh.sql is (-M prepared -D gen=1).
UPDATE refresh_tokens SET generation = generation + 1
  WHERE session_id = ('00000000-0000-0000-0001-' || lpad(to_hex(:client_id + 1), 12, '0'))::uuid
    AND generation = :gen
  RETURNING generation AS gen \gset
