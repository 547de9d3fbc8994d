//! The nightly clean-up of expired rows: scheduled with tokio-cron-scheduler inside `serve`,
//! or run once by `authd cleanup`.

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
/// statement, so each transaction is short and no long lock blocks refreshes. Used and
/// revoked tokens stay until they expire: a late reuse is still recognised as reuse.
pub async fn run_once(store: &Store, batch_size: u64) -> Result<CleanupReport, StoreError> {
    let now = store::now();
    let mut report = CleanupReport::default();
    loop {
        let deleted = store.delete_expired_refresh_tokens(now, batch_size).await?;
        report.refresh_tokens += deleted;
        if deleted < batch_size {
            break;
        }
    }
    loop {
        let deleted = store.delete_expired_sessions(now, batch_size).await?;
        report.sessions += deleted;
        if deleted < batch_size {
            break;
        }
    }
    tracing::info!(
        refresh_tokens = report.refresh_tokens,
        sessions = report.sessions,
        "cleanup deleted expired rows"
    );
    Ok(report)
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
