//! The in-memory set of revoked sessions that lets Validate refuse a logged-out session's
//! access tokens without a database query.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use crate::store::{self, Heard, Store, StoreError};

/// How far back each poll looks beyond the previous one, so a revocation written by a replica
/// whose clock lags (or whose transaction committed late) is still seen.
const POLL_OVERLAP: TimeDelta = TimeDelta::minutes(2);

/// The longest wait before the revocation listener tries to connect again.
const MAX_LISTENER_PAUSE: Duration = Duration::from_secs(5);

/// Extra time an entry is kept beyond the access-token lifetime: covers an access token signed
/// just after the revocation by a refresh that committed just before it.
const RETENTION_MARGIN: TimeDelta = TimeDelta::minutes(5);

/// Revoked session ids, each kept until every access token of its session has expired.
#[derive(Debug)]
pub struct RevokedSessions {
    /// Session id -> when the entry may be dropped.
    entries: RwLock<HashMap<Uuid, DateTime<Utc>>>,
    /// The longest access-token lifetime Validate accepts, plus leeway, plus margin.
    retention: TimeDelta,
}

impl RevokedSessions {
    /// An empty set whose entries live for `max_lifetime + leeway` plus a margin:
    /// `max_lifetime` is the longest access-token lifetime Validate accepts (not merely the
    /// current TTL), so no token it accepts can outlive its session's entry.
    pub fn new(max_lifetime: Duration, leeway: Duration) -> Self {
        let covered = TimeDelta::from_std(max_lifetime + leeway).unwrap_or(TimeDelta::MAX);
        Self {
            entries: RwLock::new(HashMap::new()),
            retention: covered
                .checked_add(&RETENTION_MARGIN)
                .unwrap_or(TimeDelta::MAX),
        }
    }

    /// Records that `session_id` was revoked at `revoked_at`; whether it was news.
    pub fn insert(&self, session_id: Uuid, revoked_at: DateTime<Utc>) -> bool {
        let drop_after = revoked_at
            .checked_add_signed(self.retention)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let known = entries.len();
        let entry = entries.entry(session_id).or_insert(drop_after);
        *entry = (*entry).max(drop_after);
        crate::metrics::revocation_set_size(entries.len());
        entries.len() > known
    }

    /// Records that every one of `sessions` was revoked at `revoked_at`.
    pub fn insert_all<'a>(
        &self,
        sessions: impl IntoIterator<Item = &'a Uuid>,
        revoked_at: DateTime<Utc>,
    ) {
        for session_id in sessions {
            self.insert(*session_id, revoked_at);
        }
    }

    /// Whether `session_id` is revoked.
    pub fn contains(&self, session_id: &Uuid) -> bool {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(session_id)
    }

    /// Drops entries whose sessions can no longer have a live access token.
    fn prune(&self, now: DateTime<Utc>) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, drop_after| *drop_after > now);
        crate::metrics::revocation_set_size(entries.len());
    }

    /// Loads every revocation that may still cover a live access token: call before serving,
    /// so a restarted replica refuses them at once. Returns when the load started.
    pub async fn load(&self, store: &Store) -> Result<DateTime<Utc>, StoreError> {
        let started = store::now();
        self.merge(store, started - self.retention).await?;
        Ok(started)
    }

    /// Adds the revocations made since `since`; how many were news.
    async fn merge(&self, store: &Store, since: DateTime<Utc>) -> Result<usize, StoreError> {
        let revoked = store.sessions_revoked_since(since).await?;
        Ok(revoked
            .into_iter()
            .filter(|&(session_id, revoked_at)| self.insert(session_id, revoked_at))
            .count())
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_until_every_access_token_has_expired() {
        let set = RevokedSessions::new(Duration::from_secs(900), Duration::ZERO);
        let (old, recent) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Utc::now();
        set.insert(
            old,
            now - TimeDelta::seconds(900) - RETENTION_MARGIN - TimeDelta::seconds(1),
        );
        set.insert(recent, now - TimeDelta::seconds(899));
        assert!(set.contains(&old) && set.contains(&recent));
        set.prune(now);
        assert!(
            !set.contains(&old),
            "old entry outlived every token it covered"
        );
        assert!(set.contains(&recent));
    }

    #[test]
    fn a_later_revocation_time_extends_an_entry() {
        let set = RevokedSessions::new(Duration::from_secs(60), Duration::ZERO);
        let session = Uuid::new_v4();
        let now = Utc::now();
        set.insert(session, now - TimeDelta::hours(1));
        set.insert(session, now);
        set.prune(now);
        assert!(set.contains(&session));
    }
}
