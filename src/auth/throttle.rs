//! Login throttling: growing delays after repeated failures, per account (in the database, so
//! every replica shares it) and per client address (in this process). OWASP prefers growing
//! delays to hard lockouts: an attacker can slow an account down, never lock its owner out for
//! longer than the maximum delay.

use std::{collections::HashMap, net::IpAddr, sync::Mutex, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};

/// Failures are forgotten after this long without a new one.
pub const FAILURE_MEMORY: TimeDelta = TimeDelta::hours(24);

/// At most this many addresses are tracked; past it, the quietest are forgotten first.
const MAX_TRACKED_ADDRESSES: usize = 100_000;

/// `free_attempts` failures cost nothing; each one after doubles the delay from `base_delay`,
/// up to `max_delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Failures allowed before any delay.
    pub free_attempts: u32,
    /// The first delay.
    pub base_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
}

impl Backoff {
    /// The delay imposed after `failures` consecutive failures.
    pub fn delay(&self, failures: u32) -> TimeDelta {
        let delay = match failures.checked_sub(self.free_attempts) {
            None => Duration::ZERO,
            Some(doublings) => self
                .base_delay
                .checked_mul(2u32.saturating_pow(doublings.min(31)))
                .unwrap_or(self.max_delay)
                .min(self.max_delay),
        };
        TimeDelta::from_std(delay).unwrap_or(TimeDelta::MAX)
    }

    /// When the block imposed at `now` after `failures` failures ends. Within the free
    /// attempts there is no block at all (the epoch): recording `now` instead would refuse, as
    /// throttled, a login that began a moment before this failure was recorded.
    pub fn block_end(&self, failures: u32, now: DateTime<Utc>) -> DateTime<Utc> {
        let delay = self.delay(failures);
        if delay > TimeDelta::zero() {
            now.checked_add_signed(delay)
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        } else {
            DateTime::<Utc>::UNIX_EPOCH
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: DateTime<Utc>,
    blocked_until: DateTime<Utc>,
}

/// Failed logins per client address, in this process.
#[derive(Debug)]
pub struct AddressThrottle {
    backoff: Backoff,
    entries: Mutex<HashMap<IpAddr, Failures>>,
}

impl AddressThrottle {
    /// Throttles addresses with `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Until when `address` may not attempt a login, if it is blocked now.
    pub fn blocked_until(&self, address: IpAddr, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&address)
            .map(|f| f.blocked_until)
            .filter(|until| *until > now)
    }

    /// Counts a failed login from `address`.
    pub fn record_failure(&self, address: IpAddr, now: DateTime<Utc>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_TRACKED_ADDRESSES && !entries.contains_key(&address) {
            entries.retain(|_, f| now - f.last < FAILURE_MEMORY && f.blocked_until > now);
            if entries.len() >= MAX_TRACKED_ADDRESSES {
                // Still full of live entries: forget the quietest rather than grow.
                if let Some(oldest) = entries.iter().min_by_key(|(_, f)| f.last).map(|(a, _)| *a) {
                    entries.remove(&oldest);
                }
            }
        }
        let entry = entries.entry(address).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: DateTime::<Utc>::UNIX_EPOCH,
        });
        if now - entry.last >= FAILURE_MEMORY {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        entry.blocked_until = self.backoff.block_end(entry.count, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        free_attempts: 3,
        base_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
    };

    #[test]
    fn delays_start_after_the_free_attempts_double_and_stop_at_the_cap() {
        let seconds: Vec<i64> = (0..12).map(|n| BACKOFF.delay(n).num_seconds()).collect();
        assert_eq!(seconds, [0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(BACKOFF.delay(u32::MAX).num_seconds(), 60);
    }

    /// A failure within the free attempts blocks nobody, not even a login that began a moment
    /// before it was recorded.
    #[test]
    fn a_free_failure_blocks_no_login_however_close_in_time() {
        let now = Utc::now();
        assert_eq!(BACKOFF.block_end(1, now), DateTime::<Utc>::UNIX_EPOCH);
        assert_eq!(BACKOFF.block_end(4, now), now + TimeDelta::seconds(2));
        let throttle = AddressThrottle::new(BACKOFF);
        let address: IpAddr = "192.0.2.7".parse().unwrap();
        throttle.record_failure(address, now);
        assert_eq!(
            throttle.blocked_until(address, now - TimeDelta::milliseconds(1)),
            None
        );
    }

    #[test]
    fn an_address_is_blocked_after_its_free_attempts_and_released_later() {
        let throttle = AddressThrottle::new(BACKOFF);
        let (address, other) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let now = Utc::now();
        for _ in 0..3 {
            assert_eq!(throttle.blocked_until(address, now), None);
            throttle.record_failure(address, now);
        }
        assert_eq!(
            throttle.blocked_until(address, now),
            Some(now + TimeDelta::seconds(1))
        );
        assert_eq!(throttle.blocked_until(other, now), None);
        assert_eq!(
            throttle.blocked_until(address, now + TimeDelta::seconds(2)),
            None
        );
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_day() {
        let throttle = AddressThrottle::new(BACKOFF);
        let address = "10.0.0.1".parse().unwrap();
        let now = Utc::now();
        for _ in 0..5 {
            throttle.record_failure(address, now);
        }
        let later = now + FAILURE_MEMORY;
        throttle.record_failure(address, later);
        assert_eq!(
            throttle.blocked_until(address, later),
            None,
            "counting starts again"
        );
    }
}
