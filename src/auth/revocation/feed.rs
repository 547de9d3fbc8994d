//! The revocation feed: each subscriber gets the set (or, resuming, the part it may have
//! missed) a page at a time, then every new entry as it is added, and a heartbeat when there
//! is none. Subscribers share the set's one ring of news, so a subscriber costs a cursor and
//! its queue; one that falls a ring behind is disconnected instead of buffered for.
//!
//! A position is a time `p` with this promise: every revocation made before `p - overlap`
//! has been delivered, where the overlap covers how late a revocation may reach this replica
//! (the poll's overlap and interval). Revocation times come from the database, so a position
//! holds at any replica: resuming replays the entries revoked since `p - overlap`.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch},
    time::Instant,
};
use uuid::Uuid;

use super::{Revocation, RevokedSessions, spread::POLL_OVERLAP};
use crate::{auth::AuthError, config::FeedSettings, store};

/// Entries per message: a snapshot page, or news gathered at once.
const PAGE: usize = 512;

/// Where a subscriber stands in the feed (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FeedPosition(DateTime<Utc>);

impl FeedPosition {
    /// A `resume_from` field: empty for none.
    pub fn parse(text: &str) -> Result<Option<Self>, AuthError> {
        if text.is_empty() {
            return Ok(None);
        }
        text.strip_prefix('p')
            .and_then(|micros| micros.parse().ok())
            .and_then(DateTime::from_timestamp_micros)
            .map(|at| Some(Self(at)))
            .ok_or(AuthError::InvalidArgument {
                field: "resume_from",
                problem: "is not a position the feed gave out",
            })
    }

    /// The opaque form a client passes back.
    pub fn encode(self) -> String {
        format!("p{}", self.0.timestamp_micros())
    }
}

/// One message for a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedMessage {
    /// Revoked sessions; none in a heartbeat.
    pub revoked: Vec<Revocation>,
    /// Whether the subscriber now has the whole set.
    pub caught_up: bool,
    /// Where the subscriber stands after this message.
    pub position: FeedPosition,
    /// When the message was made.
    pub sent_at: DateTime<Utc>,
}

/// Hands out subscriptions to the revocation set, within the configured bounds.
#[derive(Debug, Clone)]
pub struct RevocationFeed {
    revoked: Arc<RevokedSessions>,
    settings: FeedSettings,
    /// How late a revocation may reach this replica: what a resume replays.
    resume_overlap: TimeDelta,
    subscribers: Arc<Semaphore>,
    /// Subscribers by peer address, so no one client takes every seat.
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
    closing: watch::Receiver<bool>,
}

/// Ends every subscription (the server is shutting down), so no stream holds up the drain.
#[derive(Debug)]
pub struct FeedCloser(watch::Sender<bool>);

impl FeedCloser {
    /// Ends every subscription and refuses new ones, UNAVAILABLE: subscribers reconnect,
    /// to another replica.
    pub fn close(&self) {
        self.0.send_replace(true);
    }
}

impl RevocationFeed {
    /// A feed of `revoked`, whose revocations from other replicas arrive at the latest one
    /// `revocation_poll` (and the poll's overlap) after they were made.
    pub fn new(
        revoked: Arc<RevokedSessions>,
        settings: FeedSettings,
        revocation_poll: Duration,
    ) -> (Self, FeedCloser) {
        let (close, closing) = watch::channel(false);
        let poll = TimeDelta::from_std(revocation_poll).unwrap_or(TimeDelta::MAX);
        let feed = Self {
            revoked,
            settings,
            resume_overlap: POLL_OVERLAP.checked_add(&poll).unwrap_or(TimeDelta::MAX),
            subscribers: Arc::new(Semaphore::new(settings.max_subscribers)),
            per_address: Arc::default(),
            closing,
        };
        (feed, FeedCloser(close))
    }

    /// How long a subscriber may leave a message waiting before it is disconnected.
    pub fn send_timeout(&self) -> Duration {
        self.settings.send_timeout
    }

    /// A new subscriber at `peer`: everything revoked since `resume_from` (less the
    /// overlap), or the whole set; then the news.
    pub fn subscribe(
        &self,
        peer: Option<IpAddr>,
        resume_from: Option<FeedPosition>,
    ) -> Result<Subscription, AuthError> {
        if *self.closing.borrow() {
            return Err(AuthError::ShuttingDown);
        }
        let permit = Arc::clone(&self.subscribers)
            .try_acquire_owned()
            .map_err(|_| AuthError::TooManySubscribers)?;
        if let Some(address) = peer {
            let mut counts = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
            let count = counts.entry(address).or_default();
            if *count >= self.settings.max_subscribers_per_address {
                return Err(AuthError::TooManySubscribers);
            }
            *count += 1;
        }
        crate::metrics::feed_subscribers_changed(1.0);
        // Subscribed before the first page is read: what is added meanwhile comes as news.
        let news = self.revoked.news.subscribe();
        let start = resume_from.map_or(DateTime::<Utc>::MIN_UTC, |FeedPosition(at)| {
            at.checked_sub_signed(self.resume_overlap)
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        });
        Ok(Subscription {
            revoked: Arc::clone(&self.revoked),
            news,
            snapshot: Some(Snapshot {
                cursor: None,
                start,
            }),
            watermark: resume_from.unwrap_or(FeedPosition(DateTime::<Utc>::MIN_UTC)),
            heartbeat: self.settings.heartbeat,
            last_sent: Instant::now(),
            closing: self.closing.clone(),
            _seat: Seat {
                _permit: permit,
                peer,
                per_address: Arc::clone(&self.per_address),
            },
        })
    }
}

/// How far a subscriber's first pass over the set has got.
#[derive(Debug)]
struct Snapshot {
    /// The last entry handed out.
    cursor: Option<(DateTime<Utc>, Uuid)>,
    /// Where the pass began.
    start: DateTime<Utc>,
}

/// A subscriber's place among the `AUTH_FEED_MAX_SUBSCRIBERS`, given back when it goes.
#[derive(Debug)]
struct Seat {
    _permit: OwnedSemaphorePermit,
    peer: Option<IpAddr>,
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(address) = self.peer {
            let mut counts = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = counts.get_mut(&address) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&address);
                }
            }
        }
        crate::metrics::feed_subscribers_changed(-1.0);
    }
}

/// One subscriber's view of the feed.
#[derive(Debug)]
pub struct Subscription {
    revoked: Arc<RevokedSessions>,
    news: broadcast::Receiver<Revocation>,
    /// `Some` until the subscriber has the whole set.
    snapshot: Option<Snapshot>,
    watermark: FeedPosition,
    heartbeat: Duration,
    last_sent: Instant,
    closing: watch::Receiver<bool>,
    _seat: Seat,
}

impl Subscription {
    /// The next message: a page of the snapshot, news, or a heartbeat once nothing has been
    /// said for the heartbeat interval. Fails (and the subscription is over) when the
    /// subscriber fell a whole ring of news behind, or the server is shutting down.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Result<FeedMessage, AuthError> {
        let mut revoked = Vec::new();
        if let Some(snapshot) = &mut self.snapshot {
            revoked = self.revoked.page(snapshot.cursor, snapshot.start, PAGE);
            if let Some(last) = revoked.last().filter(|_| revoked.len() == PAGE) {
                snapshot.cursor = Some((last.revoked_at, last.session_id));
                // Entries known at subscription come in order: all before this one are out.
                self.watermark = self.watermark.max(FeedPosition(last.revoked_at));
                return Ok(self.message(revoked, false));
            }
            self.snapshot = None;
            self.drain_news(&mut revoked)?;
            return Ok(self.message(revoked, true));
        }
        let Self {
            news,
            closing,
            last_sent,
            heartbeat,
            ..
        } = self;
        tokio::select! {
            biased;
            _ = closing.wait_for(|closed| *closed) => return Err(AuthError::ShuttingDown),
            heard = news.recv() => revoked.push(heard.map_err(|e| match e {
                broadcast::error::RecvError::Lagged(_) => AuthError::FeedConsumerTooSlow,
                broadcast::error::RecvError::Closed => AuthError::ShuttingDown,
            })?),
            () = tokio::time::sleep_until(*last_sent + *heartbeat) => {}
        }
        self.drain_news(&mut revoked)?;
        let now = store::now();
        for revocation in &revoked {
            crate::metrics::feed_lag((now - revocation.revoked_at).to_std().unwrap_or_default());
        }
        Ok(self.message(revoked, true))
    }

    /// Completes once the server begins shutting down (for a caller waiting on the
    /// subscriber rather than on [`Subscription::next`]).
    pub async fn closing(&mut self) {
        let _ = self.closing.wait_for(|closed| *closed).await;
    }

    /// Adds the news waiting, up to a page; once none is left, the position moves to now.
    fn drain_news(&mut self, into: &mut Vec<Revocation>) -> Result<(), AuthError> {
        use broadcast::error::TryRecvError;
        while into.len() < PAGE {
            let checked_at = store::now();
            match self.news.try_recv() {
                Ok(revocation) => into.push(revocation),
                Err(TryRecvError::Empty) => {
                    self.watermark = self.watermark.max(FeedPosition(checked_at));
                    break;
                }
                Err(TryRecvError::Lagged(_)) => return Err(AuthError::FeedConsumerTooSlow),
                Err(TryRecvError::Closed) => return Err(AuthError::ShuttingDown),
            }
        }
        Ok(())
    }

    fn message(&mut self, revoked: Vec<Revocation>, caught_up: bool) -> FeedMessage {
        self.last_sent = Instant::now();
        FeedMessage {
            revoked,
            caught_up,
            position: self.watermark,
            sent_at: store::now(),
        }
    }
}
