//! SQLite's refresh-token rotations, on a thread that owns a connection of its own.
//!
//! sqlx runs each SQLite statement on a worker thread and hands the result back to the async
//! runtime: about four thread switches per statement, which made one rotation cost 0.7 ms of
//! CPU and held Refresh near 1,100/s, a quarter of what SQLite commits (BENCHMARKS.md). Here
//! one thread takes every rotation waiting in line and runs them in one transaction, each in
//! a savepoint of its own, with one commit (and one fsync) for the batch: one hand-off per
//! batch instead of four per statement. The statements are the ones
//! [`super::Store::rotate_refresh_token`] sends PostgreSQL, on the same columns and encodings.

use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use sea_orm::DbErr;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{Lifetimes, Rotation, StoreError, WriteTurn, unavailable};

/// Rotations taken into one transaction at most: a batch holds the write lock, so this bounds
/// how long other writers wait.
const MAX_BATCH: usize = 64;

/// Rotations waiting for the writer; callers beyond it wait to enqueue.
const QUEUE: usize = 1024;

/// The sending side: cheap to clone, one per [`super::Store`].
#[derive(Debug, Clone)]
pub(super) struct RotationWriter {
    jobs: mpsc::Sender<Job>,
}

/// One rotation to run, and where its outcome goes.
struct Job {
    old_hash: [u8; 32],
    new_hash: [u8; 32],
    now: DateTime<Utc>,
    lifetimes: Lifetimes,
    outcome: oneshot::Sender<Result<Rotation, StoreError>>,
}

impl RotationWriter {
    /// Opens the writer's connection to `path` and starts its thread, which ends when the
    /// last `RotationWriter` is dropped.
    pub(super) fn start(path: &Path, turn: WriteTurn) -> Result<Self, StoreError> {
        let conn = open(path, &turn).map_err(StoreError::from)?;
        let (jobs, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("sqlite-rotations".into())
            .spawn(move || run(conn, queue, &turn))
            .map_err(|e| unavailable(format!("cannot start the SQLite writer: {e}")))?;
        Ok(Self { jobs })
    }

    /// Queues one rotation and waits for its outcome.
    pub(super) async fn rotate(
        &self,
        old_hash: &[u8; 32],
        new_hash: &[u8; 32],
        now: DateTime<Utc>,
        lifetimes: Lifetimes,
    ) -> Result<Rotation, StoreError> {
        let (outcome, answer) = oneshot::channel();
        let job = Job {
            old_hash: *old_hash,
            new_hash: *new_hash,
            now,
            lifetimes,
            outcome,
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| unavailable("the SQLite writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| unavailable("the SQLite writer dropped a rotation".into()))?
    }
}

fn open(path: &Path, turn: &WriteTurn) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The pool's settings (Store::connect): WAL is a property of the file, the rest are not.
    conn.busy_timeout(turn.timeout)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

/// The writer thread: a batch at a time, in this process's write turn.
fn run(mut conn: Connection, mut queue: mpsc::Receiver<Job>, turn: &WriteTurn) {
    while let Some(first) = queue.blocking_recv() {
        // The turn first: rotations queue up meanwhile and join this batch, and the check
        // below comes as late as it can.
        let _turn = turn.lock.clone().blocking_lock_owned();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // A caller that gave up (its deadline passed) must not have its token rotated behind
        // its back: the client would hold a used token and its next Refresh would be a reuse.
        batch.retain(|job| !job.outcome.is_closed());
        if batch.is_empty() {
            continue;
        }
        let outcomes = rotate_batch(&mut conn, &batch);
        for (job, outcome) in batch.into_iter().zip(outcomes) {
            // The caller may have gone since; its rotation stands, as after any commit.
            let _ = job.outcome.send(outcome);
        }
    }
}

/// Runs the batch in one transaction; a rotation that does not complete is rolled back to its
/// savepoint without touching the others. If the commit fails, every rotation fails.
fn rotate_batch(conn: &mut Connection, batch: &[Job]) -> Vec<Result<Rotation, StoreError>> {
    let mut run = || -> rusqlite::Result<Vec<Result<Rotation, StoreError>>> {
        let mut txn = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for job in batch {
            let savepoint = txn.savepoint()?;
            let outcome = rotate(&savepoint, job);
            if matches!(outcome, Ok(Rotation::Rotated { .. })) {
                savepoint.commit()?;
            } else {
                savepoint.finish()?; // rolls back to the savepoint, then releases it
            }
            outcomes.push(outcome);
        }
        txn.commit()?;
        Ok(outcomes)
    };
    match run() {
        Ok(outcomes) => outcomes,
        Err(err) => {
            let err = StoreError::from(err);
            tracing::warn!(error = %err, rotations = batch.len(), "a batch of rotations failed");
            batch.iter().map(|_| Err(copy(&err))).collect()
        }
    }
}

/// One rotation, as [`super::Store::rotate_refresh_token`] does it on PostgreSQL.
fn rotate(conn: &Connection, job: &Job) -> Result<Rotation, StoreError> {
    let now = timestamp(job.now);
    let claimed = conn
        .prepare_cached(
            "UPDATE refresh_tokens SET used_at = ?1 \
             WHERE token_hash = ?2 AND used_at IS NULL AND expires_at > ?1 \
             RETURNING id, session_id",
        )?
        .query_row(params![now, job.old_hash], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .optional()?;
    let Some((token_id, session_id)) = claimed else {
        return Ok(Rotation::NotCurrent);
    };
    let session = conn
        .prepare_cached(
            "SELECT s.created_at, s.user_id, u.email \
             FROM sessions s LEFT JOIN users u ON u.id = s.user_id WHERE s.id = ?1",
        )?
        .query_row(params![session_id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, Option<String>>(2)?,
            ))
        })
        .optional()?;
    let Some((created_at, user_id, email)) = session else {
        return Err(super::missing("session of a refresh token"));
    };
    let expires_at = job
        .lifetimes
        .token_expiry(job.now, parse_timestamp(&created_at)?);
    let alive = conn
        .prepare_cached(
            "UPDATE sessions SET last_refreshed_at = ?1, expires_at = ?2 \
             WHERE id = ?3 AND revoked_at IS NULL AND expires_at > ?1",
        )?
        .execute(params![now, timestamp(expires_at), session_id])?;
    if alive == 0 || expires_at <= job.now {
        let revoked: Option<Option<String>> = conn
            .prepare_cached("SELECT revoked_at FROM sessions WHERE id = ?1")?
            .query_row(params![session_id], |row| row.get(0))
            .optional()?;
        return Ok(match revoked {
            Some(None) => Rotation::SessionExpired,
            _ => Rotation::SessionRevoked,
        });
    }
    let Some(email) = email else {
        return Err(super::missing("session user"));
    };
    let expires = timestamp(expires_at);
    conn.prepare_cached(
        "INSERT INTO refresh_tokens \
         (id, session_id, parent_id, token_hash, created_at, expires_at, used_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
    )?
    .execute(params![
        Uuid::new_v4().as_bytes(),
        session_id,
        token_id,
        job.new_hash,
        now,
        expires
    ])?;
    Ok(Rotation::Rotated {
        expires_at,
        session_id: uuid(&session_id)?,
        user_id: uuid(&user_id)?,
        email,
    })
}

/// A timestamp as sqlx writes `DateTime<Utc>` to SQLite, so that the text comparisons in the
/// statements (`expires_at > ?`) order it with the rows the pool wrote.
fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| broken(format!("bad timestamp {text:?}: {e}")))
}

fn uuid(bytes: &[u8]) -> Result<Uuid, StoreError> {
    Uuid::from_slice(bytes).map_err(|e| broken(format!("bad uuid column: {e}")))
}

/// A failure that retrying will not cure (a bug, a broken schema, a full disk).
fn broken(message: String) -> StoreError {
    StoreError::Database(DbErr::Custom(message))
}

/// The same failure for each rotation of a failed batch (`DbErr` is not `Clone`).
fn copy(err: &StoreError) -> StoreError {
    match err {
        StoreError::Unavailable(e) => unavailable(e.to_string()),
        StoreError::Database(e) => broken(e.to_string()),
        StoreError::EmailTaken => StoreError::EmailTaken,
    }
}

impl From<rusqlite::Error> for StoreError {
    /// SQLite's BUSY and LOCKED (another process holds the write lock past the busy timeout)
    /// are worth a retry, as on the pool; anything else is not.
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
        match err.sqlite_error_code() {
            Some(DatabaseBusy | DatabaseLocked) => unavailable(err.to_string()),
            _ => broken(err.to_string()),
        }
    }
}
