//! Where the data lives and how authd holds its connections.

use std::time::Duration;

use super::{ConfigError, vars::Vars};

/// Where `AUTH_DATABASE_URL` points when it is not set: an SQLite file created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/authd.db?mode=rwc";

/// The database and the connection pool.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `AUTH_DATABASE_URL`: `sqlite://PATH?mode=rwc` or `postgres://USER@HOST/DB`.
    pub url: String,
    /// `AUTH_DB_MAX_CONNECTIONS`: the size of the connection pool.
    pub max_connections: u32,
    /// `AUTH_DB_ACQUIRE_TIMEOUT`: how long a call waits for a pooled connection before it
    /// answers UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// `AUTH_DB_LOCK_TIMEOUT`: how long a statement waits for a lock held by another writer
    /// (SQLite's busy timeout, PostgreSQL's `lock_timeout`) before the call answers UNAVAILABLE.
    pub lock_timeout: Duration,
    /// `AUTH_DB_PROBE_INTERVAL`: how often a background probe checks the database; health is
    /// NOT_SERVING while it fails (each probe gives up after `AUTH_DB_ACQUIRE_TIMEOUT`).
    pub probe_interval: Duration,
}

impl DatabaseSettings {
    pub(super) fn parse(vars: &Vars) -> Result<Self, ConfigError> {
        let url = vars.text("AUTH_DATABASE_URL", DEFAULT_DATABASE_URL)?;
        if !url.starts_with("sqlite:")
            && !url.starts_with("postgres://")
            && !url.starts_with("postgresql://")
        {
            return Err(super::vars::error(
                "AUTH_DATABASE_URL",
                "must start with sqlite: or postgres://",
            ));
        }
        Ok(Self {
            url,
            max_connections: vars.number("AUTH_DB_MAX_CONNECTIONS", 10, 1..=1000)?,
            acquire_timeout: vars.duration("AUTH_DB_ACQUIRE_TIMEOUT", "3s")?,
            lock_timeout: vars.duration("AUTH_DB_LOCK_TIMEOUT", "2s")?,
            probe_interval: vars.duration("AUTH_DB_PROBE_INTERVAL", "5s")?,
        })
    }
}
