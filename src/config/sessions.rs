//! Sessions and their tokens: lifetimes, claims, the keys that sign and seal them, how
//! revocations spread and when ended sessions are deleted.

use std::{path::PathBuf, time::Duration};

use super::{
    ConfigError,
    vars::{Vars, error},
};

/// The longest lifetime a token may be given.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

/// How sessions and their tokens live.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// `AUTH_ISSUER`: the `iss` claim written and required.
    pub issuer: String,
    /// `AUTH_AUDIENCE`: the `aud` claim written and required.
    pub audience: String,
    /// `AUTH_ACCESS_TOKEN_TTL`: lifetime of an access token.
    pub access_token_ttl: Duration,
    /// `AUTH_ACCESS_TOKEN_MAX_LIFETIME`: the longest lifetime (`exp - iat`) an access token
    /// may have to validate, and how long a revocation is remembered for Validate; at least
    /// the TTL, which it defaults to. Keep it at the old TTL for one old lifetime after
    /// shortening the TTL, so that tokens already issued keep validating, and stay revocable.
    pub access_token_max_lifetime: Duration,
    /// `AUTH_REFRESH_TOKEN_TTL`: lifetime of a refresh token.
    pub refresh_token_ttl: Duration,
    /// `AUTH_SESSION_MAX_LIFETIME`: a session's absolute lifetime from its login; rotation
    /// never extends a session past it.
    pub session_max_lifetime: Duration,
    /// `AUTH_REFRESH_REUSE_GRACE`: `off` (strict, the default) or a duration within which one
    /// retry with the token just rotated gets the same successor back.
    pub refresh_reuse_grace: Option<Duration>,
    /// `AUTH_JWT_LEEWAY`: clock skew tolerated on `exp` and `nbf`.
    pub jwt_leeway: Duration,
    /// `AUTH_VALIDATE_CACHE_SIZE`: access tokens whose verification Validate remembers until
    /// they expire; 0 verifies the signature on every call.
    pub validate_cache_size: usize,
    /// `AUTH_REVOCATION_POLL`: how often revocations made by other replicas (or the CLI) are
    /// read from the database; Validate honours them within about this long.
    pub revocation_poll: Duration,
    /// The key files.
    pub keys: KeyFiles,
    /// When ended sessions are deleted.
    pub cleanup: CleanupSettings,
}

/// The key files. Each key does one job: one leaked or rotated never touches what the others
/// protect, so no two settings may name the same file.
#[derive(Debug, Clone, Default)]
pub struct KeyFiles {
    /// `AUTH_SIGNING_KEY_FILE`: Ed25519 private key (PKCS#8 PEM) that signs access tokens.
    /// Unset: a key is generated on first start and kept beside the SQLite database.
    pub signing: Option<PathBuf>,
    /// `AUTH_VERIFICATION_KEY_FILES`: comma-separated Ed25519 keys (public SPKI PEM, or retired
    /// private keys) whose tokens are still accepted: list the old key here when rotating, and
    /// remove it once its tokens have expired.
    pub verification: Vec<PathBuf>,
    /// `AUTH_REFRESH_KEY_FILE`: the key whose HMAC seals every refresh token (an Ed25519
    /// private key file, as `authd keys generate` writes; never the signing key). Unset with
    /// SQLite: generated beside the database on first start; required otherwise, the same on
    /// every replica.
    pub refresh: Option<PathBuf>,
    /// `AUTH_REFRESH_GRACE_KEY_FILE`: the key that derives successors for the reuse grace (an
    /// Ed25519 private key file, as `authd keys generate` writes; never the signing key). Unset
    /// with SQLite: generated beside the database when the grace is on.
    pub refresh_grace: Option<PathBuf>,
}

/// The scheduled deletion of ended sessions.
#[derive(Debug, Clone)]
pub struct CleanupSettings {
    /// `AUTH_CLEANUP_SCHEDULE`: when expired rows are deleted, as a cron expression in UTC
    /// with seconds (`sec min hour day-of-month month day-of-week`); a five-field expression
    /// gets second 0.
    pub schedule: String,
    /// `AUTH_CLEANUP_BATCH_SIZE`: rows deleted per transaction, so no long lock blocks
    /// refreshes.
    pub batch_size: u64,
}

impl SessionSettings {
    pub(super) fn parse(vars: &Vars) -> Result<Self, ConfigError> {
        let access_token_ttl = vars.duration("AUTH_ACCESS_TOKEN_TTL", "15m")?;
        let settings = Self {
            issuer: vars.text("AUTH_ISSUER", "authd")?,
            audience: vars.text("AUTH_AUDIENCE", "internal-services")?,
            access_token_ttl,
            access_token_max_lifetime: match vars.get("AUTH_ACCESS_TOKEN_MAX_LIFETIME") {
                Some(_) => vars.duration("AUTH_ACCESS_TOKEN_MAX_LIFETIME", "15m")?,
                None => access_token_ttl,
            },
            refresh_token_ttl: vars.duration("AUTH_REFRESH_TOKEN_TTL", "7d")?,
            session_max_lifetime: vars.duration("AUTH_SESSION_MAX_LIFETIME", "30d")?,
            refresh_reuse_grace: match vars.raw("AUTH_REFRESH_REUSE_GRACE", "off") {
                "off" => None,
                _ => Some(vars.duration("AUTH_REFRESH_REUSE_GRACE", "off")?),
            },
            jwt_leeway: vars.duration_allowing_zero("AUTH_JWT_LEEWAY", "0s")?,
            validate_cache_size: vars.number("AUTH_VALIDATE_CACHE_SIZE", 50_000, 0..=10_000_000)?,
            revocation_poll: vars.duration("AUTH_REVOCATION_POLL", "1s")?,
            keys: KeyFiles::parse(vars)?,
            cleanup: CleanupSettings {
                schedule: cron_schedule(vars.raw("AUTH_CLEANUP_SCHEDULE", "0 0 0 * * *"))?,
                batch_size: vars.number("AUTH_CLEANUP_BATCH_SIZE", 250, 1..=100_000)?,
            },
        };
        settings.check_lifetimes()?;
        Ok(settings)
    }

    fn check_lifetimes(&self) -> Result<(), ConfigError> {
        if self.access_token_max_lifetime < self.access_token_ttl {
            return Err(error(
                "AUTH_ACCESS_TOKEN_MAX_LIFETIME",
                "must be at least AUTH_ACCESS_TOKEN_TTL: tokens of that lifetime are issued",
            ));
        }
        for (variable, ttl) in [
            ("AUTH_ACCESS_TOKEN_TTL", self.access_token_ttl),
            (
                "AUTH_ACCESS_TOKEN_MAX_LIFETIME",
                self.access_token_max_lifetime,
            ),
            ("AUTH_REFRESH_TOKEN_TTL", self.refresh_token_ttl),
            ("AUTH_SESSION_MAX_LIFETIME", self.session_max_lifetime),
        ] {
            if ttl.as_secs() == 0 {
                return Err(error(
                    variable,
                    "must be at least one second (tokens carry whole seconds)",
                ));
            }
            if ttl > MAX_TOKEN_TTL {
                return Err(error(variable, "must be at most 3650 days"));
            }
        }
        Ok(())
    }
}

impl KeyFiles {
    fn parse(vars: &Vars) -> Result<Self, ConfigError> {
        let keys = Self {
            signing: vars.path("AUTH_SIGNING_KEY_FILE"),
            verification: vars
                .list("AUTH_VERIFICATION_KEY_FILES")
                .map(PathBuf::from)
                .collect(),
            refresh: vars.path("AUTH_REFRESH_KEY_FILE"),
            refresh_grace: vars.path("AUTH_REFRESH_GRACE_KEY_FILE"),
        };
        let named = [
            ("AUTH_SIGNING_KEY_FILE", &keys.signing),
            ("AUTH_REFRESH_KEY_FILE", &keys.refresh),
            ("AUTH_REFRESH_GRACE_KEY_FILE", &keys.refresh_grace),
        ];
        for (i, (variable, file)) in named.iter().enumerate() {
            if let Some((other, _)) = named[..i].iter().find(|(_, f)| file.is_some() && f == file) {
                return Err(error(
                    variable,
                    format!("must be a key of its own, not {other}"),
                ));
            }
        }
        Ok(keys)
    }
}

/// Validates a cron expression the way the scheduler will read it (seconds required), adding
/// second 0 to a classic five-field expression.
fn cron_schedule(expression: &str) -> Result<String, ConfigError> {
    let expression = match expression.split_whitespace().count() {
        5 => format!("0 {expression}"),
        _ => expression.to_owned(),
    };
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(&expression)
        .map_err(|e| error("AUTH_CLEANUP_SCHEDULE", format!("{e}")))?;
    Ok(expression)
}
