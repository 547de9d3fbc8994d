//! How a replica learns of revocations made elsewhere: announcements pushed by the other
//! replicas (PostgreSQL LISTEN/NOTIFY), and the poll that backs them up.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};

use super::RevokedSessions;
use crate::store::{self, Heard, Store};

/// How far back each poll looks beyond the previous one, so a revocation written by a replica
/// whose clock lags (or whose transaction committed late) is still seen.
pub(super) const POLL_OVERLAP: TimeDelta = TimeDelta::minutes(2);

/// The longest wait before the revocation listener tries to connect again.
const MAX_LISTENER_PAUSE: Duration = Duration::from_secs(5);

impl RevokedSessions {
    /// Applies the revocations other replicas announce (PostgreSQL), as they are made.
    /// Reconnects by itself; while it is away, the poll brings what it misses. Returns at once
    /// on SQLite, which has no announcements.
    pub async fn listen_forever(self: Arc<Self>, store: Store) {
        let mut pause = Duration::from_millis(100);
        loop {
            let mut listener = match store.revocation_listener().await {
                Ok(Some(listener)) => listener,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %crate::report::error_chain(&e), ?pause, "revocation listener could not connect; the poll carries on");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_LISTENER_PAUSE);
                    continue;
                }
            };
            tracing::info!("listening for revocations made by other replicas");
            loop {
                match listener.next().await {
                    Ok(Heard::Revoked(at, sessions)) => {
                        pause = Duration::from_millis(100);
                        let lag = (store::now() - at).to_std().unwrap_or_default();
                        crate::metrics::revocations_received(sessions.len(), lag);
                        self.insert_all(&sessions, at);
                    }
                    Ok(Heard::Reconnecting) => {
                        tracing::warn!(
                            "revocation listener lost its connection; reconnecting, the poll covers the gap"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::report::error_chain(&e), "revocation listener failed; starting it again");
                        break;
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_LISTENER_PAUSE);
        }
    }

    /// Polls the database every `interval` for revocations made elsewhere (other replicas, the
    /// CLI) and prunes expired entries. Runs until dropped; failures are logged and retried at
    /// the next tick.
    pub async fn poll_forever(
        self: Arc<Self>,
        store: Store,
        interval: Duration,
        mut last_poll: DateTime<Utc>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let started = store::now();
            match self.merge(&store, last_poll - POLL_OVERLAP).await {
                Ok(news) => {
                    crate::metrics::revocations_applied_by_poll(news);
                    last_poll = started;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::report::error_chain(&e), "revocation poll failed")
                }
            }
            self.prune(started);
        }
    }
}
