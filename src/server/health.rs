//! Health as Kubernetes reads it: the standard gRPC health service, SERVING while the
//! database answers, and a liveness name that stays SERVING for as long as the process serves.

use std::time::Duration;

use tonic_health::{ServingStatus, server::HealthReporter};

use crate::store::Store;

/// The gRPC service name that health checks name besides "".
pub const SERVICE_NAME: &str = "auth.v1.AuthService";

/// A health service name that is SERVING for as long as the process serves, whatever the
/// database does: for liveness probes, so an outage makes replicas unready, not restarted.
pub const LIVENESS_SERVICE: &str = "liveness";

/// The health service, SERVING, with its reporter.
pub(super) async fn serving() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (health, service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::Serving).await;
    health
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    (health, service)
}

/// Checks the database every `interval`: health is NOT_SERVING while it does not answer
/// within `timeout`, SERVING again once it does. Runs until aborted.
pub(super) async fn probe_database(
    store: Store,
    health: HealthReporter,
    interval: Duration,
    timeout: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reachable = true;
    loop {
        ticker.tick().await;
        let outcome = tokio::time::timeout(timeout, store.ping()).await;
        let now_reachable = matches!(outcome, Ok(Ok(())));
        if !now_reachable {
            let discarded = store.discard_idle_connections();
            tracing::debug!(discarded, "idle database connections discarded");
        }
        if now_reachable == reachable {
            continue;
        }
        reachable = now_reachable;
        if reachable {
            tracing::info!("database reachable again: health SERVING");
            set_health(&health, ServingStatus::Serving).await;
        } else {
            let error = match outcome {
                Ok(Err(e)) => crate::report::error_chain(&e),
                _ => format!("no answer within {timeout:?}"),
            };
            tracing::error!(%error, "database unreachable: health NOT_SERVING");
            set_health(&health, ServingStatus::NotServing).await;
        }
    }
}

pub(super) async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}
