//! The revocation feed (`WatchRevocations`): how often it speaks when there is nothing to say,
//! and how much a subscriber may cost.

use std::time::Duration;

use super::{ConfigError, vars::Vars};

/// The bounds of the revocation feed.
#[derive(Debug, Clone, Copy)]
pub struct FeedSettings {
    /// `AUTH_FEED_HEARTBEAT`: a message goes out at least this often, so a subscriber can
    /// tell a quiet stream from a dead one (its staleness bound should be a few of these).
    pub heartbeat: Duration,
    /// `AUTH_FEED_MAX_SUBSCRIBERS`: streams served at once; more answer RESOURCE_EXHAUSTED.
    pub max_subscribers: usize,
    /// `AUTH_FEED_MAX_SUBSCRIBERS_PER_ADDRESS`: streams served at once to one peer address,
    /// so that one client cannot take every seat from the services that rely on the feed.
    pub max_subscribers_per_address: usize,
    /// `AUTH_FEED_BUFFER`: revocations a subscriber may fall behind before it is disconnected
    /// (one ring shared by every subscriber, so memory does not grow with them).
    pub buffer: usize,
    /// `AUTH_FEED_SEND_TIMEOUT`: a subscriber that takes no message for this long while one
    /// is waiting has stopped reading: its connection is closed.
    pub send_timeout: Duration,
}

impl FeedSettings {
    pub(super) fn parse(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            heartbeat: vars.duration("AUTH_FEED_HEARTBEAT", "5s")?,
            max_subscribers: vars.number("AUTH_FEED_MAX_SUBSCRIBERS", 256, 1..=100_000)?,
            max_subscribers_per_address: vars.number(
                "AUTH_FEED_MAX_SUBSCRIBERS_PER_ADDRESS",
                16,
                1..=100_000,
            )?,
            buffer: vars.number("AUTH_FEED_BUFFER", 4096, 1..=1_000_000)?,
            send_timeout: vars.duration("AUTH_FEED_SEND_TIMEOUT", "10s")?,
        })
    }
}
