//! Every setting of authd, read from `AUTH_*` environment variables (and `.env`) once at
//! start-up, typed and validated, and grouped by the part of authd that needs it: each part is
//! handed its own group, never the whole. Nothing else in the crate reads the environment, and
//! this module imports none of the others.

mod admin;
mod browser;
mod database;
mod feed;
mod login;
mod observability;
mod sessions;
mod transport;
mod vars;

pub use admin::AdminSettings;
pub use browser::{BrowserSettings, CookieSettings, SameSite};
pub use database::{DEFAULT_DATABASE_URL, DatabaseSettings};
pub use feed::FeedSettings;
pub use login::{Argon2Settings, Backoff, LoginSettings, MIN_PASSWORD_CHARS_FLOOR, PasswordPolicy};
pub use observability::{LogFormat, Observability, TraceExport, TraceSampler};
pub use sessions::{CleanupSettings, KeyFiles, SessionSettings};
pub use transport::{ClientAddressRule, GrpcConnectionLimits, TlsFiles, TransportSettings};

/// A setting that could not be used; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with its value.
    pub problem: String,
}

/// All of authd's settings but the observability ones, which are read first (see
/// [`Observability`]).
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners, TLS, connection and call bounds, browsers.
    pub transport: TransportSettings,
    /// The database and its connection pool.
    pub database: DatabaseSettings,
    /// Tokens, keys, revocation and clean-up.
    pub sessions: SessionSettings,
    /// Password hashing and policy, login throttling.
    pub login: LoginSettings,
    /// Who may call the AdminService.
    pub admin: AdminSettings,
    /// The revocation feed's bounds.
    pub feed: FeedSettings,
}

impl Config {
    /// Reads `.env` (if present) and the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(vars::environment())
    }

    /// Builds the configuration from `(name, value)` pairs; variables not named `AUTH_*` are
    /// ignored.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let vars = vars::Vars::new(vars);
        let transport = TransportSettings::parse(&vars)?;
        let client_ca = transport
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca.is_some());
        Ok(Self {
            admin: AdminSettings::parse(&vars, client_ca)?,
            transport,
            database: DatabaseSettings::parse(&vars)?,
            sessions: SessionSettings::parse(&vars)?,
            login: LoginSettings::parse(&vars)?,
            feed: FeedSettings::parse(&vars)?,
        })
    }
}

#[cfg(test)]
mod tests;
