//! SQLite's rotations, on a thread that owns a connection of its own.
//!
//! sqlx runs each SQLite statement on a worker thread and hands the result back to the async
//! runtime, and each transaction commits (and fsyncs) on its own: Refresh stayed near 1,100/s,
//! a fraction of what SQLite commits (BENCHMARKS.md). Here one thread takes every rotation
//! waiting in line and runs them in one transaction with one commit (one fsync) for the batch.
//!
//! It runs the very statements the pool runs ([`super::rotation`]): the same text and the
//! same values. This file only binds `sea_orm::Value`s the way sqlx's SQLite driver encodes
//! them, and reads the returned columns the way it decodes them.

use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, TransactionBehavior, types::Value as Sql};
use sea_orm::{DbErr, Value};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{
    StoreError, WriteTurn,
    rotation::{ReturnedRow, Returning, Rotated},
    unavailable,
};

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

/// One statement to run, and where its outcome goes.
struct Job {
    statement: Returning,
    outcome: oneshot::Sender<Result<Option<Rotated>, StoreError>>,
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

    /// Queues one statement and waits for the row it returned, if any.
    pub(super) async fn run(&self, statement: Returning) -> Result<Option<Rotated>, StoreError> {
        let (outcome, answer) = oneshot::channel();
        self.jobs
            .send(Job { statement, outcome })
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
        let outcomes = run_batch(&mut conn, &batch);
        for (job, outcome) in batch.into_iter().zip(outcomes) {
            // The caller may have gone since; its rotation stands, as after any commit.
            let _ = job.outcome.send(outcome);
        }
    }
}

/// Runs the batch in one transaction. Each statement is atomic on its own, so one that
/// fails leaves the others be; if the commit fails, every one of them fails.
fn run_batch(conn: &mut Connection, batch: &[Job]) -> Vec<Result<Option<Rotated>, StoreError>> {
    let mut run = || -> rusqlite::Result<Vec<Result<Option<Rotated>, StoreError>>> {
        let txn = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let outcomes = batch
            .iter()
            .map(|job| query_one(&txn, &job.statement))
            .collect();
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

/// Runs one statement, binding each `$N` to the N-th value as sqlx does.
fn query_one(conn: &Connection, statement: &Returning) -> Result<Option<Rotated>, StoreError> {
    let mut prepared = conn.prepare_cached(statement.sql)?;
    for index in 1..=prepared.parameter_count() {
        let number = prepared
            .parameter_name(index)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok());
        let value = number
            .and_then(|n| statement.values.get(n.checked_sub(1)?))
            .ok_or_else(|| broken(format!("unbound parameter {index} in {}", statement.sql)))?;
        prepared.raw_bind_parameter(index, sqlite_value(value)?)?;
    }
    let mut rows = prepared.raw_query();
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    Rotated::read(row).map(Some)
}

/// A value as sqlx's SQLite driver writes it, so the statements compare it with the rows the
/// pool wrote: UUIDs as 16-byte blobs, timestamps as RFC 3339 text, booleans as 0 and 1.
fn sqlite_value(value: &Value) -> Result<Sql, StoreError> {
    Ok(match value {
        Value::Uuid(Some(id)) => Sql::Blob(id.as_bytes().to_vec()),
        Value::ChronoDateTimeUtc(Some(at)) => Sql::Text(timestamp(*at)),
        Value::Bytes(Some(bytes)) => Sql::Blob(bytes.clone()),
        Value::BigInt(Some(n)) => Sql::Integer(*n),
        Value::Bool(Some(b)) => Sql::Integer(i64::from(*b)),
        Value::String(Some(text)) => Sql::Text(text.clone()),
        other => return Err(broken(format!("no SQLite encoding for {other:?}"))),
    })
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

impl ReturnedRow for rusqlite::Row<'_> {
    fn uuid(&self, index: usize) -> Result<Uuid, StoreError> {
        let bytes: Vec<u8> = self.get(index)?;
        Uuid::from_slice(&bytes).map_err(|e| broken(format!("bad uuid column: {e}")))
    }

    fn text(&self, index: usize) -> Result<String, StoreError> {
        Ok(self.get(index)?)
    }

    fn timestamp(&self, index: usize) -> Result<DateTime<Utc>, StoreError> {
        let text: String = self.get(index)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|e| broken(format!("bad timestamp {text:?}: {e}")))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer's encodings are sqlx's: a value it binds compares equal to the same value
    /// written through the pool.
    #[tokio::test]
    async fn values_bind_as_the_pool_writes_them() {
        use sea_orm::{ConnectionTrait as _, Database, Statement};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("encodings.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = Database::connect(&url).await.unwrap();
        let backend = pool.get_database_backend();
        pool.execute_unprepared("CREATE TABLE t (u BLOB, at TEXT, b BLOB, n INTEGER, f INTEGER)")
            .await
            .unwrap();
        let at = super::super::now();
        let values: Vec<Value> = vec![
            Uuid::new_v4().into(),
            at.into(),
            vec![1u8, 2, 3].into(),
            42i64.into(),
            true.into(),
        ];
        pool.execute_raw(Statement::from_sql_and_values(
            backend,
            "INSERT INTO t VALUES ($1, $2, $3, $4, $5)",
            values.clone(),
        ))
        .await
        .unwrap();
        pool.close().await.unwrap();

        let conn = Connection::open(&path).unwrap();
        let mut query = conn
            .prepare(
                "SELECT count(*) FROM t WHERE u = ?1 AND at = ?2 AND b = ?3 AND n = ?4 AND f = ?5",
            )
            .unwrap();
        for (index, value) in values.iter().enumerate() {
            query
                .raw_bind_parameter(index + 1, sqlite_value(value).unwrap())
                .unwrap();
        }
        let matching: i64 = query.raw_query().next().unwrap().unwrap().get(0).unwrap();
        assert_eq!(matching, 1);
    }
}
