//! The in-memory set of revoked sessions that lets Validate refuse a logged-out session's
//! access tokens without a database query; how it learns of revocations made elsewhere
//! (`spread`); and the feed that hands it to services verifying tokens themselves (`feed`).

mod feed;
mod spread;

use std::{
    collections::{BTreeSet, HashMap, hash_map},
    ops::Bound,
    sync::RwLock,
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::broadcast;
use uuid::Uuid;

pub use feed::{FeedCloser, FeedMessage, FeedPosition, RevocationFeed, Subscription};

use crate::store::{self, Store, StoreError};

/// Extra time an entry is kept beyond the access-token lifetime: covers an access token signed
/// just after the revocation by a refresh that committed just before it.
const RETENTION_MARGIN: TimeDelta = TimeDelta::minutes(5);

/// One revoked session, as the feed hands it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    /// The session.
    pub session_id: Uuid,
    /// When it was revoked (by the clock of the replica that revoked it).
    pub revoked_at: DateTime<Utc>,
    /// When no access token of the session can still validate.
    pub forget_after: DateTime<Utc>,
}

/// The entries, by session for Validate and in revocation order for the feed.
#[derive(Debug, Default)]
struct Entries {
    /// Session id -> (revoked at, forget after).
    by_session: HashMap<Uuid, (DateTime<Utc>, DateTime<Utc>)>,
    /// The same sessions ordered by when they were revoked.
    by_time: BTreeSet<(DateTime<Utc>, Uuid)>,
}

/// Revoked session ids, each kept until every access token of its session has expired.
#[derive(Debug)]
pub struct RevokedSessions {
    entries: RwLock<Entries>,
    /// The longest access-token lifetime Validate accepts, plus leeway, plus margin.
    retention: TimeDelta,
    /// Each new entry, for the feed's subscribers.
    news: broadcast::Sender<Revocation>,
}

impl RevokedSessions {
    /// An empty set whose entries live for `max_lifetime + leeway` plus a margin:
    /// `max_lifetime` is the longest access-token lifetime Validate accepts (not merely the
    /// current TTL), so no token it accepts can outlive its session's entry. The feed's
    /// subscribers may fall `feed_buffer` new entries behind.
    pub fn new(max_lifetime: Duration, leeway: Duration, feed_buffer: usize) -> Self {
        let covered = TimeDelta::from_std(max_lifetime + leeway).unwrap_or(TimeDelta::MAX);
        Self {
            entries: RwLock::default(),
            retention: covered
                .checked_add(&RETENTION_MARGIN)
                .unwrap_or(TimeDelta::MAX),
            news: broadcast::Sender::new(feed_buffer.max(1)),
        }
    }

    /// Records that `session_id` was revoked at `revoked_at`; whether it was news.
    pub fn insert(&self, session_id: Uuid, revoked_at: DateTime<Utc>) -> bool {
        let forget_after = revoked_at
            .checked_add_signed(self.retention)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut guard = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let entries = &mut *guard;
        let news = match entries.by_session.entry(session_id) {
            hash_map::Entry::Occupied(mut known) => {
                let (_, known_until) = known.get_mut();
                *known_until = (*known_until).max(forget_after);
                false
            }
            hash_map::Entry::Vacant(new) => {
                new.insert((revoked_at, forget_after));
                entries.by_time.insert((revoked_at, session_id));
                // Sent under the lock, so a subscriber's snapshot and its news agree on order.
                // No subscriber: nothing to do.
                let _ = self.news.send(Revocation {
                    session_id,
                    revoked_at,
                    forget_after,
                });
                true
            }
        };
        crate::metrics::revocation_set_size(entries.by_session.len());
        news
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
            .by_session
            .contains_key(session_id)
    }

    /// Up to `limit` entries in revocation order: those after `cursor` (the last one handed
    /// out), or from `from` on.
    fn page(
        &self,
        cursor: Option<(DateTime<Utc>, Uuid)>,
        from: DateTime<Utc>,
        limit: usize,
    ) -> Vec<Revocation> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let start = match cursor {
            Some(cursor) => Bound::Excluded(cursor),
            None => Bound::Included((from, Uuid::nil())),
        };
        entries
            .by_time
            .range((start, Bound::Unbounded))
            .take(limit)
            .filter_map(|&(revoked_at, session_id)| {
                let &(_, forget_after) = entries.by_session.get(&session_id)?;
                Some(Revocation {
                    session_id,
                    revoked_at,
                    forget_after,
                })
            })
            .collect()
    }

    /// Drops entries whose sessions can no longer have a live access token.
    fn prune(&self, now: DateTime<Utc>) {
        let mut guard = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let entries = &mut *guard;
        let by_time = &mut entries.by_time;
        entries
            .by_session
            .retain(|session_id, &mut (revoked_at, forget_after)| {
                let keep = forget_after > now;
                if !keep {
                    by_time.remove(&(revoked_at, *session_id));
                }
                keep
            });
        crate::metrics::revocation_set_size(entries.by_session.len());
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(lifetime_secs: u64) -> RevokedSessions {
        RevokedSessions::new(Duration::from_secs(lifetime_secs), Duration::ZERO, 16)
    }

    #[test]
    fn entries_live_until_every_access_token_has_expired() {
        let set = set(900);
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
        let listed: Vec<Uuid> = set
            .page(None, DateTime::<Utc>::MIN_UTC, 10)
            .iter()
            .map(|r| r.session_id)
            .collect();
        assert_eq!(listed, [recent], "the feed's order forgets it too");
    }

    #[test]
    fn a_later_revocation_time_extends_an_entry() {
        let set = set(60);
        let session = Uuid::new_v4();
        let now = Utc::now();
        set.insert(session, now - TimeDelta::hours(1));
        set.insert(session, now);
        set.prune(now);
        assert!(set.contains(&session));
    }

    #[test]
    fn pages_follow_revocation_order_from_a_cursor_or_a_time() {
        let set = set(900);
        let now = Utc::now();
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        // Inserted out of order, listed in revocation order.
        for (i, id) in ids.iter().enumerate().rev() {
            set.insert(*id, now + TimeDelta::seconds(i as i64));
        }
        let first = set.page(None, DateTime::<Utc>::MIN_UTC, 2);
        assert_eq!(
            first.iter().map(|r| r.session_id).collect::<Vec<_>>(),
            ids[..2]
        );
        let last = first.last().unwrap();
        let rest = set.page(Some((last.revoked_at, last.session_id)), now, 10);
        assert_eq!(
            rest.iter().map(|r| r.session_id).collect::<Vec<_>>(),
            ids[2..]
        );
        let recent = set.page(None, now + TimeDelta::seconds(3), 10);
        assert_eq!(
            recent.iter().map(|r| r.session_id).collect::<Vec<_>>(),
            ids[3..]
        );
    }

    #[test]
    fn only_news_reaches_the_subscribers() {
        let set = set(900);
        let mut news = set.news.subscribe();
        let (session, now) = (Uuid::new_v4(), Utc::now());
        assert!(set.insert(session, now));
        assert!(!set.insert(session, now), "a known session is no news");
        let heard = news.try_recv().unwrap();
        assert_eq!((heard.session_id, heard.revoked_at), (session, now));
        assert!(news.try_recv().is_err(), "the repeat was not sent");
    }
}
