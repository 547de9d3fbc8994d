//! Logins: what a password hash costs, what a new password must be, and how repeated
//! failures are slowed down.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::{
    ConfigError,
    vars::{Vars, error},
};

/// The login settings.
#[derive(Debug, Clone)]
pub struct LoginSettings {
    /// `AUTH_ARGON2_*`: cost of password hashing.
    pub argon2: Argon2Settings,
    /// `AUTH_PASSWORD_HASH_CONCURRENCY`: how many password hashes run at once; more wait.
    pub password_hash_concurrency: usize,
    /// `AUTH_PASSWORD_HASH_QUEUE`: logins that may wait for a hashing thread; past that,
    /// Login answers RESOURCE_EXHAUSTED at once instead of queueing without bound.
    pub password_hash_queue: usize,
    /// What a new password must be (`AUTH_PASSWORD_MIN_CHARS`).
    pub password_policy: PasswordPolicy,
    /// Login throttling per account: `AUTH_LOGIN_FREE_ATTEMPTS` failures are free, then each
    /// further one doubles the delay from `AUTH_LOGIN_BASE_DELAY` up to `AUTH_LOGIN_MAX_DELAY`.
    pub account_backoff: Backoff,
    /// Login throttling per client address: the same delays after
    /// `AUTH_LOGIN_ADDRESS_FREE_ATTEMPTS` failures.
    pub address_backoff: Backoff,
}

/// Argon2id cost parameters. The defaults are OWASP's recommendation (19 MiB, 2 passes, 1 lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Settings {
    /// `AUTH_ARGON2_MEMORY_KIB`: memory per hash, in KiB.
    pub memory_kib: u32,
    /// `AUTH_ARGON2_ITERATIONS`: passes over that memory.
    pub iterations: u32,
    /// `AUTH_ARGON2_PARALLELISM`: lanes.
    pub parallelism: u32,
}

impl Default for Argon2Settings {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// The lowest `AUTH_PASSWORD_MIN_CHARS` allowed: SP 800-63B-4's floor for a password that is
/// one factor of several.
pub const MIN_PASSWORD_CHARS_FLOOR: usize = 8;

/// What a new password must be, after SP 800-63B-4 (3.1.1.2) for a password used alone: long
/// enough, counted in characters after normalisation; not on a list of common and breached
/// passwords; no composition rules, and nothing truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// `AUTH_PASSWORD_MIN_CHARS`: the fewest characters (Unicode code points, after NFKC).
    pub min_chars: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self { min_chars: 15 }
    }
}

/// Growing delays after repeated login failures.
///
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

impl LoginSettings {
    pub(super) fn parse(vars: &Vars) -> Result<Self, ConfigError> {
        let argon2 = Argon2Settings {
            memory_kib: vars.number("AUTH_ARGON2_MEMORY_KIB", 19 * 1024, 8..=4 * 1024 * 1024)?,
            iterations: vars.number("AUTH_ARGON2_ITERATIONS", 2, 1..=64)?,
            parallelism: vars.number("AUTH_ARGON2_PARALLELISM", 1, 1..=64)?,
        };
        if argon2.memory_kib < 8 * argon2.parallelism {
            return Err(error(
                "AUTH_ARGON2_MEMORY_KIB",
                "must be at least 8 KiB per lane of AUTH_ARGON2_PARALLELISM",
            ));
        }
        let account_backoff = Backoff {
            free_attempts: vars.number("AUTH_LOGIN_FREE_ATTEMPTS", 5, 1..=1000)?,
            base_delay: vars.duration("AUTH_LOGIN_BASE_DELAY", "1s")?,
            max_delay: vars.duration("AUTH_LOGIN_MAX_DELAY", "15m")?,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Self {
            argon2,
            password_hash_concurrency: vars.number(
                "AUTH_PASSWORD_HASH_CONCURRENCY",
                cores,
                1..=1024,
            )?,
            password_hash_queue: vars.number("AUTH_PASSWORD_HASH_QUEUE", 64, 1..=100_000)?,
            password_policy: PasswordPolicy {
                min_chars: vars.number(
                    "AUTH_PASSWORD_MIN_CHARS",
                    PasswordPolicy::default().min_chars,
                    MIN_PASSWORD_CHARS_FLOOR..=128,
                )?,
            },
            account_backoff,
            // The same delays; only the number of free attempts differs.
            address_backoff: Backoff {
                free_attempts: vars.number("AUTH_LOGIN_ADDRESS_FREE_ATTEMPTS", 20, 1..=100_000)?,
                ..account_backoff
            },
        })
    }
}
