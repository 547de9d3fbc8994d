//! Login throttling: growing delays after repeated failures, per account (in the database, so
//! every replica shares it) and per client address (in this process). OWASP prefers growing
//! delays to hard lockouts: an attacker can slow an account down, never lock its owner out for
//! longer than the maximum delay.
//!
//! Every attempt is reserved, that is counted as a failure, before its password is checked,
//! so that concurrent guesses cannot all slip in under one count; a success gives its count
//! back. Logins of one account also take turns on each replica ([`AccountTurns`]), so that a
//! user's own concurrent logins (several tabs, a service retrying) wait for each other
//! instead of being refused by each other's reservations.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AuthError;
use crate::config::Backoff;

/// Failures are forgotten after this long without a new one.
pub const FAILURE_MEMORY: TimeDelta = TimeDelta::hours(24);

/// An address an account logged in from stays trusted for it this long after its last
/// success: a login from it passes the account's block (see [`crate::auth::Authenticator::login`]).
pub const KNOWN_CLIENT_MEMORY: TimeDelta = TimeDelta::days(30);

/// At most this many addresses are tracked; past it, the quietest are forgotten first.
const MAX_TRACKED_ADDRESSES: usize = 100_000;

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

    /// Reserves an attempt from `address`: counted as a failure now, or refused (not
    /// counted) with the end of the block it meets.
    pub fn reserve(&self, address: IpAddr, now: DateTime<Utc>) -> Result<(), DateTime<Utc>> {
        let address = throttle_key(address);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = entries
            .get(&address)
            .map(|f| f.blocked_until)
            .filter(|until| *until > now)
        {
            return Err(until);
        }
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
        Ok(())
    }

    /// Gives back a reservation of `address` that turned out right, or was never checked.
    pub fn release(&self, address: IpAddr, now: DateTime<Utc>) {
        let address = throttle_key(address);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get_mut(&address) {
            entry.count = entry.count.saturating_sub(1);
            entry.blocked_until = self.backoff.block_end(entry.count, now);
        }
    }
}

/// The address a throttle counts against: IPv4 as it is, IPv6 by its /64, the smallest
/// network one subscriber is usually given (so rotating within it gains nothing).
pub fn throttle_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// Logins of one account that may wait for their turn on this replica; more are refused.
const MAX_WAITING_PER_ACCOUNT: usize = 16;

/// One login at a time per account on this replica, the rest waiting in a short queue.
#[derive(Debug, Default)]
pub struct AccountTurns {
    accounts: Arc<Mutex<HashMap<String, Queue>>>,
}

/// An account's turn, and how many logins hold or wait for it.
#[derive(Debug)]
struct Queue {
    turn: Arc<Semaphore>,
    members: usize,
}

impl AccountTurns {
    /// Waits for `account`'s turn; OVERLOADED if too many of its logins already wait.
    pub async fn take(&self, account: &str) -> Result<AccountTurn, AuthError> {
        let turn = {
            let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
            let queue = accounts.entry(account.to_owned()).or_insert_with(|| Queue {
                turn: Arc::new(Semaphore::new(1)),
                members: 0,
            });
            if queue.members > MAX_WAITING_PER_ACCOUNT {
                return Err(AuthError::Overloaded);
            }
            queue.members += 1;
            Arc::clone(&queue.turn)
        };
        // From here on, dropping the turn (or this future) leaves the queue.
        let mut member = AccountTurn {
            account: account.to_owned(),
            accounts: Arc::clone(&self.accounts),
            _permit: None,
        };
        member._permit = Some(
            turn.acquire_owned()
                .await
                .map_err(|_| AuthError::Overloaded)?,
        );
        Ok(member)
    }
}

/// A login's place in its account's queue, holding the turn once it has come; dropping it
/// lets the next one go, and the last one out removes the account.
#[derive(Debug)]
pub struct AccountTurn {
    account: String,
    accounts: Arc<Mutex<HashMap<String, Queue>>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for AccountTurn {
    fn drop(&mut self) {
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = accounts.get_mut(&self.account) {
            queue.members = queue.members.saturating_sub(1);
            if queue.members == 0 {
                accounts.remove(&self.account);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        throttle.reserve(address, now).unwrap();
        assert_eq!(
            throttle.reserve(address, now - TimeDelta::milliseconds(1)),
            Ok(())
        );
    }

    #[test]
    fn an_address_is_blocked_after_its_free_attempts_and_released_later() {
        let throttle = AddressThrottle::new(BACKOFF);
        let (address, other) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let now = Utc::now();
        for _ in 0..3 {
            assert_eq!(throttle.reserve(address, now), Ok(()));
        }
        assert_eq!(
            throttle.reserve(address, now),
            Err(now + TimeDelta::seconds(1)),
            "the fourth concurrent attempt, before any was checked"
        );
        assert_eq!(throttle.reserve(other, now), Ok(()));
        assert_eq!(
            throttle.reserve(address, now + TimeDelta::seconds(2)),
            Ok(())
        );
    }

    #[test]
    fn a_released_reservation_no_longer_counts() {
        let throttle = AddressThrottle::new(BACKOFF);
        let address = "10.0.0.1".parse().unwrap();
        let now = Utc::now();
        for _ in 0..3 {
            throttle.reserve(address, now).unwrap();
            throttle.release(address, now);
        }
        assert_eq!(throttle.reserve(address, now), Ok(()));
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_bit_prefix() {
        let throttle = AddressThrottle::new(BACKOFF);
        let now = Utc::now();
        for host in 1..=3 {
            let address = format!("2001:db8:1:2::{host:x}").parse().unwrap();
            throttle.reserve(address, now).unwrap();
        }
        let same_64 = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(throttle.reserve(same_64, now).is_err());
        let next_64 = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(throttle.reserve(next_64, now), Ok(()));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(throttle_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_day() {
        let throttle = AddressThrottle::new(BACKOFF);
        let address = "10.0.0.1".parse().unwrap();
        let now = Utc::now();
        for _ in 0..3 {
            throttle.reserve(address, now).unwrap();
        }
        let later = now + FAILURE_MEMORY;
        throttle.reserve(address, later).unwrap();
        assert_eq!(
            throttle.reserve(address, later),
            Ok(()),
            "counting starts again"
        );
    }

    #[tokio::test]
    async fn logins_of_one_account_take_turns_in_a_bounded_queue() {
        let turns = AccountTurns::default();
        let first = turns.take("a@example.com").await.unwrap();
        let other = turns.take("b@example.com").await;
        assert!(other.is_ok(), "another account has its own turn");
        let mut waiting = Vec::new();
        for _ in 0..MAX_WAITING_PER_ACCOUNT {
            let mut next = Box::pin(turns.take("a@example.com"));
            assert!(
                futures_poll_once(&mut next).await.is_none(),
                "waits while the turn is held"
            );
            waiting.push(next);
        }
        assert!(matches!(
            turns.take("a@example.com").await,
            Err(AuthError::Overloaded)
        ));
        drop(first);
        let second = waiting.remove(0).await.unwrap();
        drop(second);
        drop(waiting);
        drop(other);
        assert!(
            turns.accounts.lock().unwrap().is_empty(),
            "the last one out cleans up"
        );
    }

    /// Polls `future` once: its output if it is ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(
        future: &mut F,
    ) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *future).poll(cx) {
                std::task::Poll::Ready(output) => Some(output),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
