//! The nightly clean-up of ended sessions and forgotten login failures: scheduled with
//! tokio-cron-scheduler inside `serve`, or run once by `authd cleanup`.

use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use uuid::Uuid;

use crate::{
    auth::{FAILURE_MEMORY, KNOWN_CLIENT_MEMORY},
    config::SessionSettings,
    store::{self, Store, StoreError},
};

/// How many rows one run deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Sessions past their end, each with its refresh row.
    pub sessions: u64,
    /// Refresh tokens from before the upgrade to one row per session, past their expiry.
    pub legacy_refresh_tokens: u64,
    /// Accounts whose failed logins the throttle has forgotten.
    pub login_attempts: u64,
    /// Addresses no longer trusted for their account, unseen for `KNOWN_CLIENT_MEMORY`.
    pub known_login_clients: u64,
}

/// What the clean-up deletes, and how much at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    /// `AUTH_CLEANUP_BATCH_SIZE`: rows per statement.
    pub batch_size: u64,
    /// `AUTH_SESSION_MAX_LIFETIME`: a session this old has ended, however recently it refreshed.
    pub session_max: TimeDelta,
}

impl CleanupPolicy {
    /// The policy the session settings set.
    pub fn new(sessions: &SessionSettings) -> Self {
        Self {
            batch_size: sessions.cleanup.batch_size,
            session_max: TimeDelta::from_std(sessions.session_max_lifetime)
                .unwrap_or(TimeDelta::MAX),
        }
    }
}

/// Deletes every ended session (with its refresh row), every expired pre-upgrade token and
/// every forgotten login failure, `batch_size` rows per statement, so each transaction is
/// short and no long lock blocks refreshes. After each batch it pauses as long as the batch
/// took: on SQLite, whose one write lock a batch holds, the writers that queued meanwhile (in
/// this process or, for `authd cleanup`, in the server) get the lock before the next batch, so
/// the clean-up takes at most half the write time. A session lives until it ends, revoked or
/// not, so a late reuse of any of its tokens is still recognised as reuse.
pub async fn run_once(store: &Store, policy: CleanupPolicy) -> Result<CleanupReport, StoreError> {
    let now = store::now();
    let batch = policy.batch_size;
    let started_before = now
        .checked_sub_signed(policy.session_max)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut report = CleanupReport::default();
    let mut after = Some(Uuid::nil());
    while let Some(cursor) = after {
        let started = Instant::now();
        let swept = store
            .delete_ended_sessions(cursor, now, started_before, batch)
            .await?;
        report.sessions += swept.deleted;
        after = swept.next_after;
        pause_after(started, after.is_some()).await;
    }
    report.legacy_refresh_tokens =
        in_batches(batch, || store.delete_expired_legacy_tokens(now, batch)).await?;
    let forget_before = now - FAILURE_MEMORY;
    report.login_attempts = in_batches(batch, || {
        store.delete_stale_login_attempts(now, forget_before, batch)
    })
    .await?;
    let unseen_since = now - KNOWN_CLIENT_MEMORY;
    report.known_login_clients = in_batches(batch, || {
        store.delete_stale_known_login_clients(unseen_since, batch)
    })
    .await?;
    tracing::info!(
        sessions = report.sessions,
        legacy_refresh_tokens = report.legacy_refresh_tokens,
        login_attempts = report.login_attempts,
        known_login_clients = report.known_login_clients,
        "cleanup deleted ended rows"
    );
    Ok(report)
}

/// Runs `delete` until a batch deletes fewer than `batch_size` rows, pausing after each full
/// one; returns the rows deleted.
async fn in_batches<F, Fut>(batch_size: u64, mut delete: F) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    loop {
        let started = Instant::now();
        let deleted = delete().await?;
        total += deleted;
        let more = deleted >= batch_size;
        pause_after(started, more).await;
        if !more {
            return Ok(total);
        }
    }
}

/// Before another batch, waits as long as the last one took.
async fn pause_after(started: Instant, another_batch: bool) {
    if another_batch {
        tokio::time::sleep(started.elapsed()).await;
    }
}

/// Starts the scheduler that runs [`run_once`] on `schedule` (a validated cron expression with
/// seconds, in UTC). A failed run is logged and the schedule goes on.
pub async fn start_schedule(
    store: Store,
    schedule: &str,
    policy: CleanupPolicy,
) -> Result<JobScheduler, JobSchedulerError> {
    let scheduler = JobScheduler::new().await?;
    let job = Job::new_async(schedule, move |_, _| {
        let store = store.clone();
        Box::pin(async move {
            match run_once(&store, policy).await {
                Ok(report) => crate::metrics::cleanup_run(
                    true,
                    &[
                        ("sessions", report.sessions),
                        ("legacy_refresh_tokens", report.legacy_refresh_tokens),
                        ("login_attempts", report.login_attempts),
                        ("known_login_clients", report.known_login_clients),
                    ],
                ),
                Err(e) => {
                    crate::metrics::cleanup_run(false, &[]);
                    tracing::error!(error = %crate::report::error_chain(&e), "cleanup failed; next run on schedule");
                }
            }
        })
    })?;
    scheduler.add(job).await?;
    scheduler.start().await?;
    Ok(scheduler)
}
