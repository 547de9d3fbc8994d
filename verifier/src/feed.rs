//! The revoked sessions, followed from authd's revocation feed: a snapshot first, then each
//! revocation as it happens, heartbeats between. The follower reconnects by itself and resumes
//! from the last position it saw, so nothing made while it was away is missed.

use std::{
    collections::HashMap,
    sync::{
        RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tonic::transport::Endpoint;
use uuid::Uuid;

use crate::proto::{
    WatchRevocationsRequest, WatchRevocationsResponse, auth_service_client::AuthServiceClient,
};
use crate::unix_now;

/// The longest pause between two attempts to reach the feed.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Revoked sessions, and how recently the feed vouched for the set being complete.
#[derive(Debug)]
pub(crate) struct Revoked {
    /// Session id -> when the entry may go (Unix seconds).
    sessions: RwLock<HashMap<Uuid, i64>>,
    /// The clock `heard_at_ms` counts from.
    epoch: Instant,
    /// Milliseconds after `epoch` of the last message of a caught-up stream, plus one;
    /// 0 before the first.
    heard_at_ms: AtomicU64,
    /// When entries were last pruned (Unix seconds).
    pruned_at: AtomicU64,
}

impl Revoked {
    pub(crate) fn new() -> Self {
        Self {
            sessions: RwLock::default(),
            epoch: Instant::now(),
            heard_at_ms: AtomicU64::new(0),
            pruned_at: AtomicU64::new(0),
        }
    }

    /// Whether the session was revoked.
    pub(crate) fn contains(&self, session_id: &Uuid) -> bool {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(session_id)
    }

    /// Whether the feed vouched for the whole set within `staleness`.
    pub(crate) fn fresh(&self, staleness: Duration) -> bool {
        match self.heard_at_ms.load(Ordering::Acquire) {
            0 => false,
            heard => {
                let now = self.epoch.elapsed().as_millis();
                now.saturating_sub(u128::from(heard - 1)) <= staleness.as_millis()
            }
        }
    }

    /// Applies one message of the feed.
    fn apply(&self, message: &WatchRevocationsResponse) {
        if !message.revoked.is_empty() {
            let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
            for revoked in &message.revoked {
                // authd sends well-formed ids; anything else is not a session of its.
                let Ok(session_id) = Uuid::try_parse(&revoked.session_id) else {
                    continue;
                };
                let forget_after = revoked
                    .forget_after
                    .as_ref()
                    .map_or(i64::MAX, |at| at.seconds.saturating_add(1));
                let entry = sessions.entry(session_id).or_insert(forget_after);
                *entry = (*entry).max(forget_after);
            }
        }
        if message.caught_up {
            let heard = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.heard_at_ms
                .store(heard.saturating_add(1), Ordering::Release);
            self.prune();
        }
    }

    /// Drops the entries whose sessions can have no live token left, once a second at most.
    fn prune(&self) {
        let now = unix_now();
        let now_u = u64::try_from(now).unwrap_or(0);
        if self.pruned_at.swap(now_u, Ordering::Relaxed) == now_u {
            return;
        }
        self.sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, forget_after| *forget_after > now);
    }
}

/// Follows the feed at `authd` into `revoked` until the task is dropped. A stream silent for
/// `silence` (several heartbeats) is taken for dead and opened again.
pub(crate) async fn follow(revoked: std::sync::Arc<Revoked>, authd: Endpoint, silence: Duration) {
    let mut position = String::new();
    let mut pause = Duration::from_millis(100);
    loop {
        match watch(&revoked, &authd, silence, &mut position).await {
            Ok(()) => tracing::info!("the revocation feed ended; reconnecting"),
            Err(problem) => {
                tracing::warn!(%problem, ?pause, "the revocation feed failed; reconnecting");
            }
        }
        if revoked.fresh(silence) {
            pause = Duration::from_millis(100);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// One stream of the feed, from `position` on; `position` follows it.
async fn watch(
    revoked: &Revoked,
    authd: &Endpoint,
    silence: Duration,
    position: &mut String,
) -> Result<(), String> {
    let channel = authd.connect().await.map_err(|e| e.to_string())?;
    let mut stream = AuthServiceClient::new(channel)
        .watch_revocations(WatchRevocationsRequest {
            resume_from: position.clone(),
        })
        .await
        .map_err(|status| status.to_string())?
        .into_inner();
    loop {
        let message = tokio::time::timeout(silence, stream.message())
            .await
            .map_err(|_| format!("nothing heard for {silence:?}"))?
            .map_err(|status| status.to_string())?;
        let Some(message) = message else {
            return Ok(());
        };
        revoked.apply(&message);
        position.clone_from(&message.position);
    }
}
