//! Prometheus metrics: every name authd exports is defined here, recorded through the
//! `metrics` facade and rendered at `GET /metrics` by metrics-exporter-prometheus, but for
//! the per-call counter and latency histogram, which are cheaper counted by authd itself
//! ([`Latency`]).

mod latency;

pub use latency::Latency;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

const LOGIN_FAILURES: &str = "authd_login_failures_total";
const LOGIN_THROTTLED: &str = "authd_login_throttled_total";
const REFRESH_REUSE: &str = "authd_refresh_token_reuse_total";
const REFRESH_GRACE_RETRIES: &str = "authd_refresh_grace_retries_total";
const CALLS_CUT: &str = "authd_calls_cut_total";
const SESSIONS_REVOKED: &str = "authd_sessions_revoked_total";
const CLEANUP_RUNS: &str = "authd_cleanup_runs_total";
const CLEANUP_DELETED: &str = "authd_cleanup_deleted_rows_total";
const REVOCATION_SET: &str = "authd_revocation_set_size";
const REVOCATIONS_PUSHED: &str = "authd_revocations_pushed_total";
const REVOCATIONS_RECEIVED: &str = "authd_revocations_received_total";
const REVOCATIONS_BY_POLL: &str = "authd_revocations_applied_by_poll_total";
const REVOCATION_PUSH_LAG: &str = "authd_revocation_push_lag_seconds";
const FEED_SUBSCRIBERS: &str = "authd_revocation_feed_subscribers";
const FEED_LAG: &str = "authd_revocation_feed_lag_seconds";
const FEED_DISCONNECTS: &str = "authd_revocation_feed_disconnects_total";
const DB_POOL_CONNECTIONS: &str = "authd_db_pool_connections";
const DB_POOL_MAX: &str = "authd_db_pool_max_connections";
const BUILD_INFO: &str = "authd_build_info";
const TRACE_SPANS_DROPPED: &str = "authd_trace_spans_dropped_total";

/// How often histograms are compacted; without it their buffers grow with the traffic.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle) and
/// describes every metric so a scrape carries its HELP text.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        // A revocation's way to another replica: milliseconds when pushed, as long as the
        // transaction when it commits late. The calls' buckets serve.
        .set_buckets_for_metric(
            Matcher::Full(REVOCATION_PUSH_LAG.to_owned()),
            &latency::BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full(FEED_LAG.to_owned()), &latency::BUCKETS)?
        .install_recorder()?;
    describe();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    describe_counter!(
        TRACE_SPANS_DROPPED,
        "Trace spans dropped instead of exported: queue_full (the exporter fell behind) or \
         export_failed (the collector refused or did not answer)."
    );
    describe_counter!(
        LOGIN_FAILURES,
        "Logins refused for a wrong password, an unknown email or a disabled user."
    );
    describe_counter!(
        LOGIN_THROTTLED,
        "Logins refused before hashing because the account or address is backing off."
    );
    describe_counter!(
        REFRESH_REUSE,
        "Used refresh tokens presented again; each revokes its session."
    );
    describe_counter!(
        REFRESH_GRACE_RETRIES,
        "Refreshes forgiven by AUTH_REFRESH_REUSE_GRACE: the previous token's one retry."
    );
    describe_counter!(
        CALLS_CUT,
        "Calls refused because AUTH_MAX_CALLS_IN_FLIGHT were in progress (reason overloaded), \
         or abandoned after AUTH_CALL_TIMEOUT (reason timeout)."
    );
    describe_counter!(SESSIONS_REVOKED, "Sessions revoked, by reason.");
    describe_counter!(
        REVOCATIONS_PUSHED,
        "Revocations announced to the other replicas (PostgreSQL NOTIFY)."
    );
    describe_counter!(
        REVOCATIONS_RECEIVED,
        "Revocations received from other replicas' announcements."
    );
    describe_counter!(
        REVOCATIONS_BY_POLL,
        "Revocations this replica learnt from the poll before any announcement reached it."
    );
    describe_histogram!(
        REVOCATION_PUSH_LAG,
        "Seconds from a revocation to its announcement reaching this replica."
    );
    describe_gauge!(FEED_SUBSCRIBERS, "WatchRevocations streams being served.");
    describe_histogram!(
        FEED_LAG,
        "Seconds from a revocation to its going out on a WatchRevocations stream."
    );
    describe_counter!(
        FEED_DISCONNECTS,
        "WatchRevocations streams the server ended, by reason: too_slow (the subscriber fell \
         behind or stopped reading) or shutting_down."
    );
    describe_counter!(CLEANUP_RUNS, "Clean-up runs, by outcome.");
    describe_counter!(CLEANUP_DELETED, "Ended rows deleted by clean-up, by table.");
    describe_gauge!(
        REVOCATION_SET,
        "Revoked sessions held in memory so Validate refuses their access tokens."
    );
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Database pool connections, by state (idle or in_use)."
    );
    describe_gauge!(DB_POOL_MAX, "The database pool's maximum size.");
    describe_gauge!(BUILD_INFO, "Always 1; the labels name the running build.");
}

/// Runs histogram upkeep until dropped.
pub async fn upkeep_forever(handle: PrometheusHandle) {
    let mut ticker = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        ticker.tick().await;
        handle.run_upkeep();
    }
}

/// Every metric, in Prometheus' text format: a scrape's body.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut scrape = handle.render();
    latency::render(&mut scrape);
    scrape
}

/// The calls of one gRPC method and status code: counted, with their latency, by one
/// handle that the caller keeps, so that a call costs two atomic additions and no lookup.
pub fn rpc_calls(service: &str, method: &str, code: tonic::Code) -> Arc<Latency> {
    latency::series(service, method, code_label(code))
}

/// `count` spans dropped instead of exported, for `reason` (`queue_full`, `export_failed`).
pub fn trace_spans_dropped(reason: &'static str, count: usize) {
    counter!(TRACE_SPANS_DROPPED, "reason" => reason).increment(count as u64);
}

/// A login refused for its credentials.
pub fn login_failed() {
    counter!(LOGIN_FAILURES).increment(1);
}

/// A login refused by throttling.
pub fn login_throttled() {
    counter!(LOGIN_THROTTLED).increment(1);
}

/// A call refused because too many were in flight.
pub fn call_shed() {
    counter!(CALLS_CUT, "reason" => "overloaded").increment(1);
}

/// A call abandoned after the call timeout.
pub fn call_timed_out() {
    counter!(CALLS_CUT, "reason" => "timeout").increment(1);
}

/// A used refresh token presented again.
pub fn refresh_token_reused() {
    counter!(REFRESH_REUSE).increment(1);
}

/// A retry within the reuse grace, answered with the same successor.
pub fn refresh_grace_retry() {
    counter!(REFRESH_GRACE_RETRIES).increment(1);
}

/// `count` sessions revoked for `reason` (the stored spelling).
pub fn sessions_revoked(reason: &'static str, count: u64) {
    counter!(SESSIONS_REVOKED, "reason" => reason).increment(count);
}

/// One clean-up run and how many rows it deleted from each table.
pub fn cleanup_run(succeeded: bool, deleted: &[(&'static str, u64)]) {
    let outcome = if succeeded { "success" } else { "failure" };
    counter!(CLEANUP_RUNS, "outcome" => outcome).increment(1);
    for &(table, rows) in deleted {
        counter!(CLEANUP_DELETED, "table" => table).increment(rows);
    }
}

/// `count` revocations announced to the other replicas.
pub fn revocations_pushed(count: usize) {
    counter!(REVOCATIONS_PUSHED).increment(count as u64);
}

/// An announcement of `count` revocations received, `lag` after they were made.
pub fn revocations_received(count: usize, lag: Duration) {
    counter!(REVOCATIONS_RECEIVED).increment(count as u64);
    histogram!(REVOCATION_PUSH_LAG).record(lag.as_secs_f64());
}

/// `count` revocations the poll found before any announcement did.
pub fn revocations_applied_by_poll(count: usize) {
    counter!(REVOCATIONS_BY_POLL).increment(count as u64);
}

/// A revocation feed subscriber came (`+1`) or went (`-1`).
pub fn feed_subscribers_changed(by: f64) {
    gauge!(FEED_SUBSCRIBERS).increment(by);
}

/// A revocation went out on a feed `lag` after it was made.
pub fn feed_lag(lag: Duration) {
    histogram!(FEED_LAG).record(lag.as_secs_f64());
}

/// The server ended a feed subscription for `reason`.
pub fn feed_disconnected(reason: &'static str) {
    counter!(FEED_DISCONNECTS, "reason" => reason).increment(1);
}

/// The revocation set's current size.
pub fn revocation_set_size(entries: usize) {
    gauge!(REVOCATION_SET).set(entries as f64);
}

/// The pool's connections right now.
pub fn db_pool(in_use: u32, idle: u32, max: u32) {
    gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set(in_use);
    gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(idle);
    gauge!(DB_POOL_MAX).set(max);
}

/// gRPC's canonical upper-case names, as grpc-go and Envoy label them.
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
