//! The nightly clean-up of expired rows: scheduled with tokio-cron-scheduler inside `serve`,
//! or run once by `authd cleanup`.

use std::time::Instant;

use chrono::{DateTime, Utc};

use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::store::{self, Store, StoreError};

/// How many rows one run deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Refresh tokens past their expiry.
    pub refresh_tokens: u64,
    /// Sessions past their end.
    pub sessions: u64,
}

/// Deletes every refresh token and session whose expiry has passed, `batch_size` rows per
/// statement, so each transaction is short and no long lock blocks refreshes. After each batch
/// it pauses as long as the batch took: on SQLite, whose one write lock a batch holds, the
/// writers that queued meanwhile (in this process or, for `authd cleanup`, in the server) get
/// the lock before the next batch, so the clean-up takes at most half the write time. Used and
/// revoked tokens stay until they expire: a late reuse is still recognised as reuse.
pub async fn run_once(store: &Store, batch_size: u64) -> Result<CleanupReport, StoreError> {
    let now = store::now();
    let report = CleanupReport {
        refresh_tokens: in_batches(store, Table::RefreshTokens, now, batch_size).await?,
        sessions: in_batches(store, Table::Sessions, now, batch_size).await?,
    };
    tracing::info!(
        refresh_tokens = report.refresh_tokens,
        sessions = report.sessions,
        "cleanup deleted expired rows"
    );
    Ok(report)
}

/// The tables with expiring rows.
#[derive(Debug, Clone, Copy)]
enum Table {
    RefreshTokens,
    Sessions,
}

/// Deletes `table`'s rows expired at `now` until a batch deletes fewer than `batch_size`,
/// pausing after each full batch as long as it took; returns the rows deleted.
async fn in_batches(
    store: &Store,
    table: Table,
    now: DateTime<Utc>,
    batch_size: u64,
) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let started = Instant::now();
        let deleted = match table {
            Table::RefreshTokens => store.delete_expired_refresh_tokens(now, batch_size).await?,
            Table::Sessions => store.delete_expired_sessions(now, batch_size).await?,
        };
        total += deleted;
        if deleted < batch_size {
            return Ok(total);
        }
        tokio::time::sleep(started.elapsed()).await;
    }
}

/// Starts the scheduler that runs [`run_once`] on `schedule` (a validated cron expression with
/// seconds, in UTC). A failed run is logged and the schedule goes on.
pub async fn start_schedule(
    store: Store,
    schedule: &str,
    batch_size: u64,
) -> Result<JobScheduler, JobSchedulerError> {
    let scheduler = JobScheduler::new().await?;
    let job = Job::new_async(schedule, move |_, _| {
        let store = store.clone();
        Box::pin(async move {
            match run_once(&store, batch_size).await {
                Ok(report) => {
                    crate::metrics::cleanup_run(true, report.refresh_tokens, report.sessions);
                }
                Err(e) => {
                    crate::metrics::cleanup_run(false, 0, 0);
                    tracing::error!(error = %crate::error_chain(&e), "cleanup failed; next run on schedule");
                }
            }
        })
    })?;
    scheduler.add(job).await?;
    scheduler.start().await?;
    Ok(scheduler)
}
