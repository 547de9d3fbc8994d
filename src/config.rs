//! Every setting of authd, read from `AUTH_*` environment variables (and `.env`) once at
//! start-up, typed and validated. Nothing else in the crate reads the environment.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use crate::auth::{Backoff, MIN_PASSWORD_CHARS_FLOOR, PasswordPolicy};

mod observability;
pub use observability::{LogFormat, Observability, TraceExport, TraceSampler};

/// Where `AUTH_DATABASE_URL` points when it is not set: an SQLite file created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/authd.db?mode=rwc";

/// The longest lifetime a token may be given.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

/// A setting that could not be used; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with its value.
    pub problem: String,
}

/// All of authd's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `AUTH_LISTEN`: the gRPC listen address. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// `AUTH_TLS_CERT_FILE` and `AUTH_TLS_KEY_FILE` (PEM): serve gRPC over TLS.
    pub tls: Option<TlsFiles>,
    /// `AUTH_HTTP_LISTEN`: the plain-HTTP listen address for `/.well-known/jwks.json`.
    pub http_listen: SocketAddr,
    /// `AUTH_DATABASE_URL`: `sqlite://PATH?mode=rwc` or `postgres://USER@HOST/DB`.
    pub database_url: String,
    /// `AUTH_DB_MAX_CONNECTIONS`: the size of the connection pool.
    pub db_max_connections: u32,
    /// `AUTH_DB_ACQUIRE_TIMEOUT`: how long a call waits for a pooled connection before it
    /// answers UNAVAILABLE.
    pub db_acquire_timeout: Duration,
    /// `AUTH_DB_LOCK_TIMEOUT`: how long a statement waits for a lock held by another writer
    /// (SQLite's busy timeout, PostgreSQL's `lock_timeout`) before the call answers UNAVAILABLE.
    pub db_lock_timeout: Duration,
    /// `AUTH_SIGNING_KEY_FILE`: Ed25519 private key (PKCS#8 PEM) that signs access tokens.
    /// Unset: a key is generated on first start and kept beside the SQLite database.
    pub signing_key_file: Option<PathBuf>,
    /// `AUTH_VERIFICATION_KEY_FILES`: comma-separated Ed25519 keys (public SPKI PEM, or retired
    /// private keys) whose tokens are still accepted: list the old key here when rotating, and
    /// remove it once its tokens have expired.
    pub verification_key_files: Vec<PathBuf>,
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
    /// `AUTH_REFRESH_KEY_FILE`: the key whose HMAC seals every refresh token (an Ed25519
    /// private key file, as `authd keys generate` writes; never the signing key). Unset with
    /// SQLite: generated beside the database on first start; required otherwise, the same on
    /// every replica.
    pub refresh_key_file: Option<PathBuf>,
    /// `AUTH_REFRESH_REUSE_GRACE`: `off` (strict, the default) or a duration within which one
    /// retry with the token just rotated gets the same successor back.
    pub refresh_reuse_grace: Option<Duration>,
    /// `AUTH_REFRESH_GRACE_KEY_FILE`: the key that derives successors for the reuse grace (an
    /// Ed25519 private key file, as `authd keys generate` writes; never the signing key). Unset
    /// with SQLite: generated beside the database when the grace is on.
    pub refresh_grace_key_file: Option<PathBuf>,
    /// `AUTH_JWT_LEEWAY`: clock skew tolerated on `exp` and `nbf`.
    pub jwt_leeway: Duration,
    /// `AUTH_VALIDATE_CACHE_SIZE`: access tokens whose verification Validate remembers until
    /// they expire; 0 verifies the signature on every call.
    pub validate_cache_size: usize,
    /// `AUTH_ARGON2_*`: cost of password hashing.
    pub argon2: Argon2Settings,
    /// `AUTH_PASSWORD_HASH_CONCURRENCY`: how many password hashes run at once; more wait.
    pub password_hash_concurrency: usize,
    /// `AUTH_PASSWORD_HASH_QUEUE`: logins that may wait for a hashing thread; past that,
    /// Login answers RESOURCE_EXHAUSTED at once instead of queueing without bound.
    pub password_hash_queue: usize,
    /// What a new password must be (`AUTH_PASSWORD_MIN_CHARS`).
    pub password_policy: PasswordPolicy,
    /// `AUTH_MAX_REQUEST_BYTES`: largest request message accepted; larger ones are refused
    /// with RESOURCE_EXHAUSTED before they are decoded.
    pub max_request_bytes: usize,
    /// Login throttling per account: `AUTH_LOGIN_FREE_ATTEMPTS` failures are free, then each
    /// further one doubles the delay from `AUTH_LOGIN_BASE_DELAY` up to `AUTH_LOGIN_MAX_DELAY`.
    pub account_backoff: Backoff,
    /// Login throttling per client address: the same delays after
    /// `AUTH_LOGIN_ADDRESS_FREE_ATTEMPTS` failures.
    pub address_backoff: Backoff,
    /// Where the address login throttling counts against comes from, when a Login carries
    /// no `client` field.
    pub client_address: ClientAddressRule,
    /// `AUTH_SHUTDOWN_GRACE`: how long in-flight calls may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// HTTP/2 bounds on each gRPC connection, so that one peer cannot hold unbounded state.
    pub grpc_connection: GrpcConnectionLimits,
    /// `AUTH_MAX_CONNECTIONS`: connections each listener (gRPC, HTTP) holds open at once;
    /// more wait in the kernel's backlog. Lowered at start if the descriptor limit is smaller.
    pub max_connections: usize,
    /// `AUTH_HANDSHAKE_TIMEOUT`: how long a new connection has to send its opening (the
    /// HTTP/2 preface, or an HTTP/1 request head up to its empty line) before it is closed.
    pub handshake_timeout: Duration,
    /// `AUTH_IDLE_TIMEOUT`: a connection (either listener) with no call in flight for this
    /// long is closed; clients reconnect when they next call.
    pub idle_timeout: Duration,
    /// `AUTH_MAX_CALLS_IN_FLIGHT`: AuthService calls in progress at once across every
    /// connection; one more is refused at once with RESOURCE_EXHAUSTED (`OVERLOADED`).
    pub max_calls_in_flight: usize,
    /// `AUTH_CALL_TIMEOUT`: the longest an AuthService call may take, reading its request
    /// included; past it the call is abandoned with DEADLINE_EXCEEDED (`CALL_TIMEOUT`).
    pub call_timeout: Duration,
    /// `AUTH_DB_PROBE_INTERVAL`: how often a background probe checks the database; health is
    /// NOT_SERVING while it fails (each probe gives up after `AUTH_DB_ACQUIRE_TIMEOUT`).
    pub db_probe_interval: Duration,
    /// `AUTH_REVOCATION_POLL`: how often revocations made by other replicas (or the CLI) are
    /// read from the database; Validate honours them within about this long.
    pub revocation_poll: Duration,
    /// `AUTH_CLEANUP_SCHEDULE`: when expired rows are deleted, as a cron expression in UTC
    /// with seconds (`sec min hour day-of-month month day-of-week`); a five-field expression
    /// gets second 0.
    pub cleanup_schedule: String,
    /// `AUTH_CLEANUP_BATCH_SIZE`: rows deleted per transaction, so no long lock blocks
    /// refreshes.
    pub cleanup_batch_size: u64,
    /// `AUTH_CORS_ORIGINS`: comma-separated origins (`https://app.example.com`) whose pages
    /// may call authd through gRPC-Web with credentials. Never a wildcard: the refresh cookie
    /// must not be offered to every site. Empty: same-origin only.
    pub cors_origins: Vec<String>,
    /// The HttpOnly cookie that carries the refresh token to browsers.
    pub refresh_cookie: CookieSettings,
}

/// How the refresh-token cookie is named and scoped. `HttpOnly`, `Secure` and `Path=/` are
/// not settings: a refresh token must never be readable by JavaScript or sent in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSettings {
    /// `AUTH_REFRESH_COOKIE_NAME`: `__Host-authd_refresh` by default; the `__Host-` prefix
    /// makes browsers refuse it unless it is Secure, host-only and `Path=/`.
    pub name: String,
    /// `AUTH_REFRESH_COOKIE_SAMESITE`: `Strict` (the default), `Lax` or `None`.
    pub same_site: SameSite,
}

/// The cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// Sent only with requests from the same site.
    Strict,
    /// Also sent on top-level navigations from other sites.
    Lax,
    /// Sent with cross-site requests too (needs `AUTH_CORS_ORIGINS` for the calling pages).
    None,
}

impl SameSite {
    /// The attribute's spelling in `Set-Cookie`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "Strict",
            Self::Lax => "Lax",
            Self::None => "None",
        }
    }
}

/// TLS for the gRPC port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `AUTH_TLS_CERT_FILE`: the server's certificate chain, PEM.
    pub cert: PathBuf,
    /// `AUTH_TLS_KEY_FILE`: the server's private key, PEM.
    pub key: PathBuf,
    /// `AUTH_TLS_CLIENT_CA_FILE`: when set, clients must present a certificate signed by this
    /// CA (mutual TLS); one without is refused at the handshake.
    pub client_ca: Option<PathBuf>,
}

/// The end user's address for a Login without a `client` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientAddressRule {
    /// `AUTH_TRUSTED_PROXY_HOPS`: proxies in front of authd that append the address they saw
    /// to `x-forwarded-for`; the address is the entry that many from the right (the one the
    /// outermost trusted proxy wrote). 0: the header is ignored.
    pub trusted_proxy_hops: usize,
    /// `AUTH_LOGIN_THROTTLE_PEER`: with no address from the request, count against the
    /// calling peer's own address. Off by default: when every call comes through one gateway,
    /// that would throttle every user behind it at once.
    pub throttle_peer: bool,
}

/// What one gRPC connection may hold. Without a stream limit hyper accepts every stream a
/// peer opens (each costs memory until the peer ends it); keepalive pings find the peers that
/// vanished without closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcConnectionLimits {
    /// `AUTH_GRPC_MAX_CONCURRENT_STREAMS`: calls open at once on one connection, advertised
    /// in SETTINGS; a stream beyond it is refused (RST_STREAM REFUSED_STREAM).
    pub max_concurrent_streams: u32,
    /// `AUTH_GRPC_KEEPALIVE_INTERVAL`: how often an HTTP/2 PING goes to each peer.
    pub keepalive_interval: Duration,
    /// `AUTH_GRPC_KEEPALIVE_TIMEOUT`: a peer that has not answered a PING by then is closed.
    pub keepalive_timeout: Duration,
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

impl Config {
    /// Reads `.env` (if present) and the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(environment())
    }

    /// Builds the configuration from `(name, value)` pairs; variables not named `AUTH_*` are
    /// ignored.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let vars = Vars(
            vars.into_iter()
                .filter(|(k, _)| k.starts_with("AUTH_"))
                .collect(),
        );
        let argon2 = Argon2Settings {
            memory_kib: vars.number("AUTH_ARGON2_MEMORY_KIB", 19 * 1024, 8..=4 * 1024 * 1024)?,
            iterations: vars.number("AUTH_ARGON2_ITERATIONS", 2, 1..=64)?,
            parallelism: vars.number("AUTH_ARGON2_PARALLELISM", 1, 1..=64)?,
        };
        if argon2.memory_kib < 8 * argon2.parallelism {
            return Err(ConfigError {
                variable: "AUTH_ARGON2_MEMORY_KIB",
                problem: "must be at least 8 KiB per lane of AUTH_ARGON2_PARALLELISM".into(),
            });
        }
        let account_backoff = Backoff {
            free_attempts: vars.number("AUTH_LOGIN_FREE_ATTEMPTS", 5, 1..=1000)?,
            base_delay: vars.duration("AUTH_LOGIN_BASE_DELAY", "1s")?,
            max_delay: vars.duration("AUTH_LOGIN_MAX_DELAY", "15m")?,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let config = Self {
            listen: vars.parsed("AUTH_LISTEN", "127.0.0.1:50051")?,
            tls: vars.tls()?,
            http_listen: vars.parsed("AUTH_HTTP_LISTEN", "127.0.0.1:8080")?,
            database_url: vars.text("AUTH_DATABASE_URL", DEFAULT_DATABASE_URL)?,
            db_max_connections: vars.number("AUTH_DB_MAX_CONNECTIONS", 10, 1..=1000)?,
            db_acquire_timeout: vars.duration("AUTH_DB_ACQUIRE_TIMEOUT", "3s")?,
            db_lock_timeout: vars.duration("AUTH_DB_LOCK_TIMEOUT", "2s")?,
            signing_key_file: vars.0.get("AUTH_SIGNING_KEY_FILE").map(PathBuf::from),
            verification_key_files: vars
                .raw("AUTH_VERIFICATION_KEY_FILES", "")
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
            issuer: vars.text("AUTH_ISSUER", "authd")?,
            audience: vars.text("AUTH_AUDIENCE", "internal-services")?,
            access_token_ttl: vars.duration("AUTH_ACCESS_TOKEN_TTL", "15m")?,
            access_token_max_lifetime: match vars.0.get("AUTH_ACCESS_TOKEN_MAX_LIFETIME") {
                Some(_) => vars.duration("AUTH_ACCESS_TOKEN_MAX_LIFETIME", "15m")?,
                None => vars.duration("AUTH_ACCESS_TOKEN_TTL", "15m")?,
            },
            refresh_token_ttl: vars.duration("AUTH_REFRESH_TOKEN_TTL", "7d")?,
            session_max_lifetime: vars.duration("AUTH_SESSION_MAX_LIFETIME", "30d")?,
            refresh_key_file: vars.0.get("AUTH_REFRESH_KEY_FILE").map(PathBuf::from),
            refresh_reuse_grace: match vars.raw("AUTH_REFRESH_REUSE_GRACE", "off") {
                "off" => None,
                _ => Some(vars.duration("AUTH_REFRESH_REUSE_GRACE", "off")?),
            },
            refresh_grace_key_file: vars.0.get("AUTH_REFRESH_GRACE_KEY_FILE").map(PathBuf::from),
            jwt_leeway: vars.duration_allowing_zero("AUTH_JWT_LEEWAY", "0s")?,
            validate_cache_size: vars.number("AUTH_VALIDATE_CACHE_SIZE", 50_000, 0..=10_000_000)?,
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
            max_request_bytes: vars.number(
                "AUTH_MAX_REQUEST_BYTES",
                16 * 1024,
                1024..=4 * 1024 * 1024,
            )?,
            account_backoff,
            // The same delays; only the number of free attempts differs.
            address_backoff: Backoff {
                free_attempts: vars.number("AUTH_LOGIN_ADDRESS_FREE_ATTEMPTS", 20, 1..=100_000)?,
                ..account_backoff
            },
            client_address: ClientAddressRule {
                // AUTH_TRUST_FORWARDED_FOR, its predecessor, meant one proxy in front.
                trusted_proxy_hops: match vars.0.get("AUTH_TRUSTED_PROXY_HOPS") {
                    Some(_) => vars.number("AUTH_TRUSTED_PROXY_HOPS", 0, 0..=16)?,
                    None => usize::from(vars.flag("AUTH_TRUST_FORWARDED_FOR", false)?),
                },
                throttle_peer: vars.flag("AUTH_LOGIN_THROTTLE_PEER", false)?,
            },
            shutdown_grace: vars.duration("AUTH_SHUTDOWN_GRACE", "10s")?,
            max_connections: vars.number("AUTH_MAX_CONNECTIONS", 4096, 1..=1_000_000)?,
            handshake_timeout: vars.duration("AUTH_HANDSHAKE_TIMEOUT", "10s")?,
            idle_timeout: vars.duration("AUTH_IDLE_TIMEOUT", "5m")?,
            max_calls_in_flight: vars.number("AUTH_MAX_CALLS_IN_FLIGHT", 1024, 1..=1_000_000)?,
            call_timeout: vars.duration("AUTH_CALL_TIMEOUT", "30s")?,
            grpc_connection: GrpcConnectionLimits {
                max_concurrent_streams: vars.number(
                    "AUTH_GRPC_MAX_CONCURRENT_STREAMS",
                    100,
                    1..=10_000,
                )?,
                keepalive_interval: vars.duration("AUTH_GRPC_KEEPALIVE_INTERVAL", "30s")?,
                keepalive_timeout: vars.duration("AUTH_GRPC_KEEPALIVE_TIMEOUT", "10s")?,
            },
            db_probe_interval: vars.duration("AUTH_DB_PROBE_INTERVAL", "5s")?,
            revocation_poll: vars.duration("AUTH_REVOCATION_POLL", "1s")?,
            cleanup_schedule: cron_schedule(vars.raw("AUTH_CLEANUP_SCHEDULE", "0 0 0 * * *"))?,
            cleanup_batch_size: vars.number("AUTH_CLEANUP_BATCH_SIZE", 250, 1..=100_000)?,
            cors_origins: vars
                .raw("AUTH_CORS_ORIGINS", "")
                .split(',')
                .map(str::trim)
                .filter(|origin| !origin.is_empty())
                .map(cors_origin)
                .collect::<Result<_, _>>()?,
            refresh_cookie: CookieSettings {
                name: cookie_name(vars.raw("AUTH_REFRESH_COOKIE_NAME", "__Host-authd_refresh"))?,
                same_site: match vars
                    .raw("AUTH_REFRESH_COOKIE_SAMESITE", "Strict")
                    .to_ascii_lowercase()
                    .as_str()
                {
                    "strict" => SameSite::Strict,
                    "lax" => SameSite::Lax,
                    "none" => SameSite::None,
                    _ => {
                        return Err(error(
                            "AUTH_REFRESH_COOKIE_SAMESITE",
                            "must be Strict, Lax or None",
                        ));
                    }
                },
            },
        };
        if !config.database_url.starts_with("sqlite:")
            && !config.database_url.starts_with("postgres://")
            && !config.database_url.starts_with("postgresql://")
        {
            return Err(ConfigError {
                variable: "AUTH_DATABASE_URL",
                problem: "must start with sqlite: or postgres://".into(),
            });
        }
        // Each key does one job: one leaked or rotated never touches what the others protect.
        let keys = [
            ("AUTH_SIGNING_KEY_FILE", &config.signing_key_file),
            ("AUTH_REFRESH_KEY_FILE", &config.refresh_key_file),
            (
                "AUTH_REFRESH_GRACE_KEY_FILE",
                &config.refresh_grace_key_file,
            ),
        ];
        for (i, (variable, file)) in keys.iter().enumerate() {
            if let Some((other, _)) = keys[..i].iter().find(|(_, f)| file.is_some() && f == file) {
                return Err(error(
                    variable,
                    format!("must be a key of its own, not {other}"),
                ));
            }
        }
        if config.access_token_max_lifetime < config.access_token_ttl {
            return Err(error(
                "AUTH_ACCESS_TOKEN_MAX_LIFETIME",
                "must be at least AUTH_ACCESS_TOKEN_TTL: tokens of that lifetime are issued",
            ));
        }
        for (variable, ttl) in [
            ("AUTH_ACCESS_TOKEN_TTL", config.access_token_ttl),
            (
                "AUTH_ACCESS_TOKEN_MAX_LIFETIME",
                config.access_token_max_lifetime,
            ),
            ("AUTH_REFRESH_TOKEN_TTL", config.refresh_token_ttl),
            ("AUTH_SESSION_MAX_LIFETIME", config.session_max_lifetime),
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
        Ok(config)
    }
}

/// The `AUTH_*` variables, with typed accessors that name the variable on error.
struct Vars(HashMap<String, String>);

impl Vars {
    fn raw<'a>(&'a self, name: &'static str, default: &'a str) -> &'a str {
        self.0.get(name).map_or(default, |v| v.trim())
    }

    fn text(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        let value = self.raw(name, default);
        if value.is_empty() {
            return Err(error(name, "must not be empty"));
        }
        Ok(value.to_owned())
    }

    fn parsed<T>(&self, name: &'static str, default: &str) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.raw(name, default)
            .parse()
            .map_err(|e| error(name, format!("{e}")))
    }

    fn number<T>(
        &self,
        name: &'static str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + std::fmt::Display + Copy,
        T::Err: std::fmt::Display,
    {
        let value = match self.0.get(name) {
            None => default,
            Some(v) => v.trim().parse().map_err(|e| error(name, format!("{e}")))?,
        };
        if !range.contains(&value) {
            return Err(error(
                name,
                format!("{value} is outside {}..={}", range.start(), range.end()),
            ));
        }
        Ok(value)
    }

    fn tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
        let path = |name: &str| self.0.get(name).map(|v| PathBuf::from(v.trim()));
        let client_ca = path("AUTH_TLS_CLIENT_CA_FILE");
        match (path("AUTH_TLS_CERT_FILE"), path("AUTH_TLS_KEY_FILE")) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert,
                key,
                client_ca,
            })),
            (None, None) if client_ca.is_none() => Ok(None),
            (None, None) => Err(error(
                "AUTH_TLS_CLIENT_CA_FILE",
                "needs AUTH_TLS_CERT_FILE and AUTH_TLS_KEY_FILE",
            )),
            (Some(_), None) => Err(error(
                "AUTH_TLS_KEY_FILE",
                "must be set with AUTH_TLS_CERT_FILE",
            )),
            (None, Some(_)) => Err(error(
                "AUTH_TLS_CERT_FILE",
                "must be set with AUTH_TLS_KEY_FILE",
            )),
        }
    }

    fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.0.get(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => Ok(true),
            Some(v) if matches!(v.as_str(), "false" | "0" | "no") => Ok(false),
            Some(_) => Err(error(name, "must be true or false")),
        }
    }

    fn duration_allowing_zero(
        &self,
        name: &'static str,
        default: &str,
    ) -> Result<Duration, ConfigError> {
        humantime::parse_duration(self.raw(name, default))
            .map_err(|e| error(name, format!("{e} (write durations like 15m, 7d, 500ms)")))
    }

    fn duration(&self, name: &'static str, default: &str) -> Result<Duration, ConfigError> {
        let value = self.duration_allowing_zero(name, default)?;
        if value.is_zero() {
            return Err(error(name, "must be longer than zero"));
        }
        Ok(value)
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

/// An exact origin, `scheme://host[:port]`, as browsers send it in `Origin`.
fn cors_origin(origin: &str) -> Result<String, ConfigError> {
    const VARIABLE: &str = "AUTH_CORS_ORIGINS";
    if origin.contains('*') {
        return Err(error(
            VARIABLE,
            "a wildcard would offer the refresh cookie to any site; list each origin",
        ));
    }
    let host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| {
            error(
                VARIABLE,
                format!("{origin:?} must start with https:// or http://"),
            )
        })?;
    let well_formed = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if !well_formed {
        return Err(error(
            VARIABLE,
            format!("{origin:?} must be scheme://host[:port], with no path"),
        ));
    }
    Ok(origin.to_owned())
}

/// A cookie name: an RFC 6265 token.
fn cookie_name(name: &str) -> Result<String, ConfigError> {
    let is_token_char = |b: u8| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b);
    if name.is_empty() || !name.bytes().all(is_token_char) {
        return Err(error(
            "AUTH_REFRESH_COOKIE_NAME",
            "must be a cookie name: letters, digits and !#$%&'*+-.^_`|~",
        ));
    }
    Ok(name.to_owned())
}

/// The process environment, after `.env` (if present) has been read into it. A missing `.env`
/// is normal; a malformed one is reported by the values it leaves unset.
fn environment() -> std::env::Vars {
    let _ = dotenvy::dotenv();
    std::env::vars()
}

fn error(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        problem: problem.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = config(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.access_token_ttl, Duration::from_secs(15 * 60));
        assert_eq!(c.refresh_token_ttl, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.jwt_leeway, Duration::ZERO);
        assert_eq!(c.argon2, Argon2Settings::default());
        assert!(c.signing_key_file.is_none());
        assert_eq!(c.cleanup_batch_size, 250);
        assert_eq!(c.validate_cache_size, 50_000);
    }

    #[test]
    fn human_durations_are_read() {
        let c = config(&[
            ("AUTH_ACCESS_TOKEN_TTL", "90s"),
            ("AUTH_REFRESH_TOKEN_TTL", "2d 3h"),
        ])
        .unwrap();
        assert_eq!(c.access_token_ttl, Duration::from_secs(90));
        assert_eq!(
            c.refresh_token_ttl,
            Duration::from_secs(2 * 86400 + 3 * 3600)
        );
    }

    #[test]
    fn a_bad_duration_names_its_variable() {
        let e = config(&[("AUTH_ACCESS_TOKEN_TTL", "soon")]).unwrap_err();
        assert_eq!(e.variable, "AUTH_ACCESS_TOKEN_TTL");
        assert!(e.to_string().starts_with("AUTH_ACCESS_TOKEN_TTL: "), "{e}");
    }

    #[test]
    fn a_sub_second_token_lifetime_is_refused() {
        let e = config(&[("AUTH_REFRESH_TOKEN_TTL", "500ms")]).unwrap_err();
        assert_eq!(e.variable, "AUTH_REFRESH_TOKEN_TTL");
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        let e = config(&[("AUTH_DB_MAX_CONNECTIONS", "0")]).unwrap_err();
        assert_eq!(e.variable, "AUTH_DB_MAX_CONNECTIONS");
        let e = config(&[("AUTH_ARGON2_MEMORY_KIB", "lots")]).unwrap_err();
        assert_eq!(e.variable, "AUTH_ARGON2_MEMORY_KIB");
    }

    #[test]
    fn unknown_database_schemes_are_refused() {
        let e = config(&[("AUTH_DATABASE_URL", "mysql://x")]).unwrap_err();
        assert_eq!(e.variable, "AUTH_DATABASE_URL");
    }

    #[test]
    fn the_cleanup_schedule_is_validated() {
        assert_eq!(config(&[]).unwrap().cleanup_schedule, "0 0 0 * * *");
        let five = config(&[("AUTH_CLEANUP_SCHEDULE", "30 3 * * *")]).unwrap();
        assert_eq!(five.cleanup_schedule, "0 30 3 * * *");
        for bad in ["every night", "61 * * * *", "* * * *"] {
            let e = config(&[("AUTH_CLEANUP_SCHEDULE", bad)]).unwrap_err();
            assert_eq!(e.variable, "AUTH_CLEANUP_SCHEDULE", "{bad}");
        }
    }

    #[test]
    fn absurd_token_lifetimes_are_refused() {
        let e = config(&[("AUTH_REFRESH_TOKEN_TTL", "20000d")]).unwrap_err();
        assert_eq!(e.variable, "AUTH_REFRESH_TOKEN_TTL");
    }

    #[test]
    fn the_longest_access_token_lifetime_defaults_to_the_ttl_and_never_falls_below_it() {
        let c = config(&[("AUTH_ACCESS_TOKEN_TTL", "5m")]).unwrap();
        assert_eq!(c.access_token_max_lifetime, Duration::from_secs(300));
        let c = config(&[("AUTH_ACCESS_TOKEN_MAX_LIFETIME", "1h")]).unwrap();
        assert_eq!(c.access_token_max_lifetime, Duration::from_secs(3600));
        let e = config(&[
            ("AUTH_ACCESS_TOKEN_TTL", "15m"),
            ("AUTH_ACCESS_TOKEN_MAX_LIFETIME", "5m"),
        ])
        .unwrap_err();
        assert_eq!(e.variable, "AUTH_ACCESS_TOKEN_MAX_LIFETIME");
    }

    #[test]
    fn the_password_minimum_is_never_below_eight_characters() {
        assert_eq!(config(&[]).unwrap().password_policy.min_chars, 15);
        let e = config(&[("AUTH_PASSWORD_MIN_CHARS", "7")]).unwrap_err();
        assert_eq!(e.variable, "AUTH_PASSWORD_MIN_CHARS");
    }

    #[test]
    fn the_former_forwarded_for_switch_means_one_trusted_proxy() {
        let c = config(&[]).unwrap();
        assert_eq!(c.client_address, ClientAddressRule::default());
        let c = config(&[("AUTH_TRUST_FORWARDED_FOR", "true")]).unwrap();
        assert_eq!(c.client_address.trusted_proxy_hops, 1);
        let c = config(&[
            ("AUTH_TRUST_FORWARDED_FOR", "true"),
            ("AUTH_TRUSTED_PROXY_HOPS", "2"),
        ])
        .unwrap();
        assert_eq!(c.client_address.trusted_proxy_hops, 2);
    }

    #[test]
    fn a_bad_listen_address_is_refused() {
        let e = config(&[("AUTH_LISTEN", "localhost")]).unwrap_err();
        assert_eq!(e.variable, "AUTH_LISTEN");
    }

    #[test]
    fn cors_origins_are_exact_origins_never_wildcards() {
        let c = config(&[(
            "AUTH_CORS_ORIGINS",
            "https://app.example.com, http://localhost:3000",
        )])
        .unwrap();
        assert_eq!(
            c.cors_origins,
            ["https://app.example.com", "http://localhost:3000"]
        );
        for bad in [
            "*",
            "https://*.example.com",
            "app.example.com",
            "https://a.com/path",
        ] {
            let e = config(&[("AUTH_CORS_ORIGINS", bad)]).unwrap_err();
            assert_eq!(e.variable, "AUTH_CORS_ORIGINS", "{bad} was accepted");
        }
    }

    #[test]
    fn the_refresh_cookie_is_configurable_within_the_rules() {
        let c = config(&[]).unwrap();
        assert_eq!(c.refresh_cookie.name, "__Host-authd_refresh");
        assert_eq!(c.refresh_cookie.same_site, SameSite::Strict);
        let c = config(&[
            ("AUTH_REFRESH_COOKIE_NAME", "rt"),
            ("AUTH_REFRESH_COOKIE_SAMESITE", "lax"),
        ])
        .unwrap();
        assert_eq!(c.refresh_cookie.name, "rt");
        assert_eq!(c.refresh_cookie.same_site, SameSite::Lax);
        for (variable, bad) in [
            ("AUTH_REFRESH_COOKIE_NAME", "a=b"),
            ("AUTH_REFRESH_COOKIE_NAME", "a b"),
            ("AUTH_REFRESH_COOKIE_SAMESITE", "sometimes"),
        ] {
            assert_eq!(config(&[(variable, bad)]).unwrap_err().variable, variable);
        }
    }
}
