//! Rotations, batched: the refreshes waiting in line share one statement and one commit.
//!
//! A rotation alone is one round trip, one statement and one commit, and on PostgreSQL the
//! commit and the statement's start-up cost more than the row it changes; on SQLite each
//! commit is an fsync, and sqlx hands every statement to a worker thread and back. One task
//! per store takes every rotation waiting in line, up to [`MAX_BATCH`] of distinct sessions,
//! and runs them as one statement ([`Returning::rotate`]): each row passes or fails its own
//! conditions, so a refused rotation changes nothing and takes nothing from the others.
//! BENCHMARKS.md has the figures.

use std::collections::{HashMap, HashSet, VecDeque};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{
    StoreError, WriteTurn,
    rotation::{MAX_BATCH, Returning, Rotated, Rotation},
    unavailable,
};

/// Rotations waiting for the batcher; callers beyond it wait to enqueue.
const QUEUE: usize = 1024;

/// The sending side: cheap to clone, one per [`super::Store`].
#[derive(Debug, Clone)]
pub(super) struct RotationBatcher {
    jobs: mpsc::Sender<Job>,
}

/// One rotation to run, and where its outcome goes.
struct Job {
    rotation: Rotation,
    outcome: oneshot::Sender<Result<Option<Rotated>, StoreError>>,
}

impl Job {
    fn session(&self) -> Uuid {
        self.rotation.presented.session_id
    }
}

impl RotationBatcher {
    /// Starts the batcher's task on `db`, taking `turn` (SQLite) before each statement. The
    /// task ends when the last `RotationBatcher` is dropped.
    pub(super) fn start(db: DatabaseConnection, turn: Option<WriteTurn>) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(db, turn, queue));
        Self { jobs }
    }

    /// Queues one rotation and waits for the row it returned: `None` if it matched nothing.
    pub(super) async fn rotate(&self, rotation: Rotation) -> Result<Option<Rotated>, StoreError> {
        let (outcome, answer) = oneshot::channel();
        self.jobs
            .send(Job { rotation, outcome })
            .await
            .map_err(|_| unavailable("the rotation batcher has stopped".into()))?;
        answer
            .await
            .map_err(|_| unavailable("the rotation batcher dropped a rotation".into()))?
    }
}

/// The batcher's task: a batch at a time, so no two of this process's batches ever wait for
/// each other's row locks.
async fn run(db: DatabaseConnection, turn: Option<WriteTurn>, mut queue: mpsc::Receiver<Job>) {
    // Rotations of a session that already had one in the batch being formed: one statement
    // must not name a row twice (which join row would update it is undefined), so they wait
    // for the next. Bounded by the callers waiting, one job each.
    let mut deferred = VecDeque::new();
    loop {
        let first = match deferred.pop_front() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        // The turn first: rotations queue up meanwhile and join this batch, and the check
        // below comes as late as it can.
        let guard = match &turn {
            Some(turn) => match tokio::time::timeout(turn.timeout, turn.lock.lock()).await {
                Ok(guard) => Some(guard),
                Err(_) => {
                    let waited = "timed out waiting for the SQLite write lock";
                    let _ = first.outcome.send(Err(unavailable(waited.into())));
                    continue;
                }
            },
            None => None,
        };
        let mut batch = collect(first, &mut deferred, &mut queue);
        // A caller that gave up (its deadline passed) must not have its token rotated behind
        // its back: the client would hold a used token and its next Refresh would be a reuse.
        batch.retain(|job| !job.outcome.is_closed());
        if batch.is_empty() {
            continue;
        }
        let outcome = execute(&db, &batch).await;
        drop(guard);
        match outcome {
            Ok(mut rotated) => {
                for job in batch {
                    // The caller may have gone since; its rotation stands, as after any commit.
                    let outcome = rotated.remove(&job.session());
                    let _ = job.outcome.send(Ok(outcome));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, rotations = batch.len(), "a batch of rotations failed");
                for job in batch {
                    let _ = job.outcome.send(Err(copy(&err)));
                }
            }
        }
    }
}

/// `first` and whatever else is waiting, up to [`MAX_BATCH`] rotations of distinct sessions.
fn collect(first: Job, deferred: &mut VecDeque<Job>, queue: &mut mpsc::Receiver<Job>) -> Vec<Job> {
    let mut sessions = HashSet::from([first.session()]);
    let mut batch = vec![first];
    let mut admit = |job: Job, batch: &mut Vec<Job>, later: &mut VecDeque<Job>| {
        if batch.len() < MAX_BATCH && sessions.insert(job.session()) {
            batch.push(job);
        } else {
            later.push_back(job);
        }
    };
    let mut still_deferred = VecDeque::new();
    for job in deferred.drain(..) {
        admit(job, &mut batch, &mut still_deferred);
    }
    *deferred = still_deferred;
    // Looks at no more than a batch's worth beyond what it admits, so a crowd of rotations of
    // one session cannot make it drain the whole queue.
    let mut looked_at = 0;
    while batch.len() < MAX_BATCH && looked_at < 2 * MAX_BATCH {
        let Ok(job) = queue.try_recv() else {
            break;
        };
        looked_at += 1;
        admit(job, &mut batch, deferred);
    }
    batch
}

/// Runs one statement for the batch; the rotated rows by session.
async fn execute(
    db: &DatabaseConnection,
    batch: &[Job],
) -> Result<HashMap<Uuid, Rotated>, StoreError> {
    let rotations: Vec<Rotation> = batch.iter().map(|job| job.rotation.clone()).collect();
    let statement = Returning::rotate(&rotations);
    let statement =
        Statement::from_sql_and_values(db.get_database_backend(), statement.sql, statement.values);
    db.query_all_raw(statement)
        .await?
        .iter()
        .map(|row| Rotated::read(row).map(|rotated| (rotated.session_id, rotated)))
        .collect()
}

/// The same failure for each rotation of a failed batch (`DbErr` is not `Clone`).
fn copy(err: &StoreError) -> StoreError {
    match err {
        StoreError::Unavailable(e) => unavailable(e.to_string()),
        StoreError::Database(e) => StoreError::Database(DbErr::Custom(e.to_string())),
        StoreError::EmailTaken => StoreError::EmailTaken,
    }
}
