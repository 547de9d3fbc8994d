# authd's Refresh statement (src/store/rotation.rs, ROTATE) on SQLite in WAL mode, on one
# thread, to find what the file system allows with synchronous=FULL (authd's) and NORMAL:
# one rotation per transaction, and batches of 64 rotations per transaction as authd's
# rotation writer runs them.
import os, sqlite3, time, uuid, hashlib, tempfile

ROTATE = """UPDATE refresh_tokens SET generation = generation + 1, secret_hash = ?6,
    rotated_at = ?2, expires_at = ?7, retried = FALSE
  WHERE session_id = ?1 AND generation = ?4 AND secret_hash = ?5 AND expires_at > ?2
    AND session_started_at > ?3
    AND EXISTS (SELECT 1 FROM sessions s
      WHERE s.id = refresh_tokens.session_id AND s.revoked_at IS NULL)
    AND EXISTS (SELECT 1 FROM users u
      WHERE u.id = refresh_tokens.user_id AND u.disabled_at IS NULL)
  RETURNING user_id, (SELECT u.email FROM users u WHERE u.id = refresh_tokens.user_id),
    session_started_at, expires_at"""

for sync in ("FULL", "NORMAL"):
    for batch in (1, 64):
        scratch = tempfile.TemporaryDirectory()  # removed when the next pass replaces it
        db = sqlite3.connect(os.path.join(scratch.name, "x.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL"); db.execute(f"PRAGMA synchronous={sync}")
        db.execute("CREATE TABLE users (id BLOB PRIMARY KEY, email TEXT, disabled_at TEXT)")
        db.execute("CREATE TABLE sessions (id BLOB PRIMARY KEY, user_id BLOB, created_at TEXT, revoked_at TEXT)")
        db.execute("CREATE TABLE refresh_tokens (session_id BLOB PRIMARY KEY, user_id BLOB, session_started_at TEXT, generation INTEGER, secret_hash BLOB, rotated_at TEXT, expires_at TEXT, retried INTEGER)")
        user = uuid.uuid4().bytes
        db.execute("INSERT INTO users VALUES (?, 'a@b.c', NULL)", (user,))
        sessions = [uuid.uuid4().bytes for _ in range(64)]
        current = {}
        for s in sessions:
            db.execute("INSERT INTO sessions VALUES (?, ?, '2026-12-01', NULL)", (s, user))
            h = os.urandom(32); current[s] = (1, h)
            db.execute("INSERT INTO refresh_tokens VALUES (?, ?, '2026-12-01', 1, ?, '2026-12-01', '2099', 0)", (s, user, h))
        n, start = 0, time.time()
        while time.time() - start < 3:
            db.execute("BEGIN IMMEDIATE")
            for _ in range(batch):
                s = sessions[n % 64]; gen, old = current[s]
                new = hashlib.sha256(os.urandom(32)).digest()
                row = db.execute(ROTATE, (s, "2026-12-02", "2026-11-01", gen, old, new, "2026-12-09")).fetchone()
                assert row is not None
                current[s] = (gen + 1, new); n += 1
            db.execute("COMMIT")
        print(f"synchronous={sync}, {batch} per transaction: {n / (time.time() - start):.0f} rotations/s (one thread)")
