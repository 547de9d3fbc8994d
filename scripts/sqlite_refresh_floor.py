# The Refresh transaction's statements on SQLite in WAL mode, single-threaded, to find the
# commit rate the file system allows with synchronous=FULL (authd's) and NORMAL.
import os, sqlite3, sys, time, uuid, hashlib, tempfile
for sync in ("FULL", "NORMAL"):
    scratch = tempfile.TemporaryDirectory()  # removed when the next pass replaces it
    path = os.path.join(scratch.name, "x.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL"); db.execute(f"PRAGMA synchronous={sync}")
    db.execute("CREATE TABLE users (id BLOB PRIMARY KEY, email TEXT)")
    db.execute("CREATE TABLE sessions (id BLOB PRIMARY KEY, user_id BLOB, created_at TEXT, expires_at TEXT, last_refreshed_at TEXT, revoked_at TEXT)")
    db.execute("CREATE TABLE refresh_tokens (id BLOB PRIMARY KEY, session_id BLOB, parent_id BLOB, token_hash BLOB UNIQUE, created_at TEXT, expires_at TEXT, used_at TEXT)")
    user = uuid.uuid4().bytes
    db.execute("INSERT INTO users VALUES (?, 'a@b.c')", (user,))
    sessions = [uuid.uuid4().bytes for _ in range(64)]
    current = {}
    for s in sessions:
        db.execute("INSERT INTO sessions VALUES (?, ?, '2026', '2099', '2026', NULL)", (s, user))
        h = os.urandom(32); current[s] = h
        db.execute("INSERT INTO refresh_tokens VALUES (?, ?, NULL, ?, '2026', '2099', NULL)", (uuid.uuid4().bytes, s, h))
    n, start = 0, time.time()
    while time.time() - start < 3:
        s = sessions[n % 64]; old = current[s]; new = hashlib.sha256(os.urandom(32)).digest()
        db.execute("BEGIN IMMEDIATE")
        tid, sid = db.execute("UPDATE refresh_tokens SET used_at='2026' WHERE token_hash=? AND used_at IS NULL AND expires_at > '2026' RETURNING id, session_id", (old,)).fetchone()
        db.execute("SELECT * FROM sessions s LEFT JOIN users u ON u.id = s.user_id WHERE s.id=?", (sid,)).fetchone()
        db.execute("UPDATE sessions SET last_refreshed_at='2026', expires_at='2099' WHERE id=? AND revoked_at IS NULL AND expires_at > '2026'", (sid,))
        db.execute("INSERT INTO refresh_tokens VALUES (?, ?, ?, ?, '2026', '2099', NULL)", (uuid.uuid4().bytes, sid, tid, new))
        db.execute("COMMIT")
        current[s] = new; n += 1
    print(f"synchronous={sync}: {n / (time.time() - start):.0f} refresh transactions/s (one thread)")
