//! The verifier: the token rules against authd's keys, a cache of verified tokens, and the
//! revoked sessions from the feed.

use std::{sync::Arc, time::Duration};

use tokio::task::JoinHandle;
use tonic::{Code, transport::Endpoint};
use tonic_types::StatusExt as _;

use crate::{
    AccessClaims, Rejection, TokenRules, VerifiedTokens,
    feed::{self, Revoked},
    keys::KeyRing,
    proto::{ValidateRequest, auth_service_client::AuthServiceClient},
    unix_now,
};

/// What to do while the revocation feed is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStale {
    /// Refuse every token ([`VerifyError::FeedStale`]): a logout may have been missed.
    #[default]
    FailClosed,
    /// Ask authd's Validate about each token (one call each) until the feed is back.
    CallValidate,
}

/// How to reach authd and what to accept. [`VerifierSettings::new`] gives authd's defaults.
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    /// authd's JWKS: `http://<AUTH_HTTP_LISTEN>/.well-known/jwks.json`.
    pub jwks_url: http::Uri,
    /// authd's gRPC endpoint (`AUTH_LISTEN`), for the revocation feed and Validate. Configure
    /// TLS on it (with tonic's TLS features) if authd serves TLS.
    pub authd: Endpoint,
    /// `AUTH_ISSUER`.
    pub issuer: String,
    /// `AUTH_AUDIENCE`.
    pub audience: String,
    /// `AUTH_ACCESS_TOKEN_MAX_LIFETIME`: the longest `exp - iat` accepted (15 minutes).
    pub max_lifetime: Duration,
    /// `AUTH_JWT_LEEWAY`: clock skew tolerated on `exp`, `nbf` and `iat` (none).
    pub leeway: Duration,
    /// How long the feed may stay silent before the verifier stops trusting its set (30 s;
    /// authd's heartbeat is 5 s).
    pub staleness: Duration,
    /// What to do then.
    pub on_stale: OnStale,
    /// The shortest time between two JWKS fetches caused by unknown keys (10 s).
    pub key_refetch_interval: Duration,
    /// How often the JWKS is fetched regardless, so retired keys go (5 minutes).
    pub key_refresh_interval: Duration,
    /// How long a JWKS fetch may take (5 s).
    pub fetch_timeout: Duration,
    /// Verified tokens remembered until they expire, so that a token's signature is checked
    /// once (50,000; 0 checks it every time).
    pub cache_size: usize,
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The JWKS address is not an `http://` URL.
    #[error("jwks_url {0:?}: must be an http:// URL")]
    JwksUrl(String),
    /// authd's gRPC address is not a URL.
    #[error("authd_url {0:?}: {1}")]
    AuthdUrl(String, String),
}

impl VerifierSettings {
    /// authd at `jwks_url` and `authd_url`, issuing for `issuer` and `audience`, with the
    /// defaults above.
    pub fn new(
        jwks_url: &str,
        authd_url: &str,
        issuer: &str,
        audience: &str,
    ) -> Result<Self, SettingsError> {
        let jwks: http::Uri = jwks_url
            .parse()
            .map_err(|_| SettingsError::JwksUrl(jwks_url.to_owned()))?;
        if jwks.scheme_str() != Some("http") || jwks.host().is_none() {
            return Err(SettingsError::JwksUrl(jwks_url.to_owned()));
        }
        let authd = Endpoint::from_shared(authd_url.to_owned())
            .map_err(|e| SettingsError::AuthdUrl(authd_url.to_owned(), e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        Ok(Self {
            jwks_url: jwks,
            authd,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            max_lifetime: Duration::from_secs(15 * 60),
            leeway: Duration::ZERO,
            staleness: Duration::from_secs(30),
            on_stale: OnStale::FailClosed,
            key_refetch_interval: Duration::from_secs(10),
            key_refresh_interval: Duration::from_secs(5 * 60),
            fetch_timeout: Duration::from_secs(5),
            cache_size: 50_000,
        })
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Malformed, forged, of an unknown key, or breaking a rule (see [`TokenRules`]).
    #[error("invalid access token")]
    Invalid,
    /// Past its expiry.
    #[error("access token expired")]
    Expired,
    /// Its session was logged out or revoked.
    #[error("session revoked")]
    Revoked,
    /// The revocation feed has been silent longer than the staleness bound: a logout may have
    /// been missed, so nothing is accepted.
    #[error("revocation feed stale: cannot tell whether the session was revoked")]
    FeedStale,
    /// Validate, asked while the feed was stale, could not answer.
    #[error("authd unavailable: {0}")]
    Unavailable(String),
}

impl VerifyError {
    /// The reason authd itself gives for the same refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid => "TOKEN_INVALID",
            Self::Expired => "TOKEN_EXPIRED",
            Self::Revoked => "SESSION_REVOKED",
            Self::FeedStale => "REVOCATION_FEED_STALE",
            Self::Unavailable(_) => "UNAVAILABLE",
        }
    }
}

impl From<VerifyError> for tonic::Status {
    /// UNAUTHENTICATED for a refused token; UNAVAILABLE when the verifier cannot decide.
    fn from(err: VerifyError) -> Self {
        let code = match err {
            VerifyError::Invalid | VerifyError::Expired | VerifyError::Revoked => {
                Code::Unauthenticated
            }
            VerifyError::FeedStale | VerifyError::Unavailable(_) => Code::Unavailable,
        };
        let mut status = tonic::Status::new(code, err.to_string());
        status.metadata_mut().insert(
            "x-authd-reason",
            tonic::metadata::MetadataValue::from_static(err.reason()),
        );
        status
    }
}

/// Verifies authd access tokens locally; cheap to clone. Its background tasks stop when the
/// last clone is dropped.
#[derive(Debug, Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rules: TokenRules,
    keys: Arc<KeyRing>,
    revoked: Arc<Revoked>,
    cache: VerifiedTokens,
    staleness: Duration,
    /// authd's Validate, when it stands in for a stale feed.
    validate: Option<AuthServiceClient<tonic::transport::Channel>>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Verifier {
    /// Starts following authd's keys and revocation feed in the background (call it within
    /// a Tokio runtime). Tokens are refused until both have arrived: see [`Verifier::ready`].
    pub fn start(settings: VerifierSettings) -> Self {
        let keys = Arc::new(KeyRing::new(
            settings.jwks_url.clone(),
            settings.fetch_timeout,
            settings.key_refetch_interval,
        ));
        let revoked = Arc::new(Revoked::new());
        let refresh = tokio::spawn(refresh_keys(
            Arc::clone(&keys),
            settings.key_refresh_interval,
        ));
        let follow = tokio::spawn(feed::follow(
            Arc::clone(&revoked),
            settings.authd.clone(),
            settings.staleness,
        ));
        let rules = TokenRules::new(
            &settings.issuer,
            &settings.audience,
            settings.max_lifetime,
            settings.leeway,
        );
        let cache = VerifiedTokens::new(settings.cache_size, &rules);
        Self {
            inner: Arc::new(Inner {
                rules,
                keys,
                revoked,
                cache,
                staleness: settings.staleness,
                validate: (settings.on_stale == OnStale::CallValidate)
                    .then(|| AuthServiceClient::new(settings.authd.connect_lazy())),
                tasks: [refresh, follow],
            }),
        }
    }

    /// Waits until the keys and the feed's snapshot have arrived, for at most `within`.
    pub async fn ready(&self, within: Duration) -> Result<(), VerifyError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if !self.inner.keys.current().is_empty()
                && self.inner.revoked.fresh(self.inner.staleness)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(VerifyError::Unavailable(format!(
                    "authd's keys and revocation feed did not arrive within {within:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Verifies `token` with what is at hand: no network. A token of a key not seen yet is
    /// [`VerifyError::Invalid`] here; [`Verifier::verify`] fetches the keys first.
    pub fn verify_local(&self, token: &str) -> Result<Arc<AccessClaims>, VerifyError> {
        self.check(token, unix_now()).map_err(|e| match e {
            Refusal::UnknownKey => VerifyError::Invalid,
            Refusal::Stale(_) => VerifyError::FeedStale,
            Refusal::Verify(e) => e,
        })
    }

    /// Verifies `token`: refetches the keys once for an unknown key (rate-limited), and asks
    /// Validate while the feed is stale if [`OnStale::CallValidate`] is set.
    pub async fn verify(&self, token: &str) -> Result<Arc<AccessClaims>, VerifyError> {
        let outcome = match self.check(token, unix_now()) {
            Err(Refusal::UnknownKey) => {
                self.inner.keys.refetch_for_unknown_key().await;
                self.check(token, unix_now())
            }
            outcome => outcome,
        };
        match outcome {
            Ok(claims) => Ok(claims),
            Err(Refusal::UnknownKey) => Err(VerifyError::Invalid),
            Err(Refusal::Stale(claims)) => self.ask_validate(token, claims).await,
            Err(Refusal::Verify(e)) => Err(e),
        }
    }

    fn check(&self, token: &str, now: i64) -> Result<Arc<AccessClaims>, Refusal> {
        let inner = &*self.inner;
        let claims = inner.cache.get_or_verify(token, now, || {
            let keys = inner.keys.current();
            inner.rules.check(token, now, |kid| keys.get(kid)).map_err(
                |rejection| match rejection {
                    Rejection::UnknownKey => Refusal::UnknownKey,
                    Rejection::Expired => Refusal::Verify(VerifyError::Expired),
                    Rejection::Invalid => Refusal::Verify(VerifyError::Invalid),
                },
            )
        })?;
        if inner.revoked.contains(&claims.sid) {
            return Err(Refusal::Verify(VerifyError::Revoked));
        }
        if !inner.revoked.fresh(inner.staleness) {
            return Err(Refusal::Stale(claims));
        }
        Ok(claims)
    }

    /// While the feed is stale: Validate's word on a token whose signature checked out.
    /// While the feed is stale: Validate's word on a token whose `claims` passed the rules.
    async fn ask_validate(
        &self,
        token: &str,
        claims: Arc<AccessClaims>,
    ) -> Result<Arc<AccessClaims>, VerifyError> {
        let Some(client) = &self.inner.validate else {
            return Err(VerifyError::FeedStale);
        };
        let request = ValidateRequest {
            access_token: token.to_owned(),
        };
        match client.clone().validate(request).await {
            Ok(_) => Ok(claims),
            Err(status) if status.code() == Code::Unauthenticated => {
                let reason = status.get_details_error_info().map(|info| info.reason);
                Err(match reason.as_deref() {
                    Some("SESSION_REVOKED") => VerifyError::Revoked,
                    Some("TOKEN_EXPIRED") => VerifyError::Expired,
                    _ => VerifyError::Invalid,
                })
            }
            Err(status) => Err(VerifyError::Unavailable(status.message().to_owned())),
        }
    }
}

/// Why [`Verifier::check`] did not accept a token.
#[derive(Debug)]
enum Refusal {
    /// Signed by a key not seen yet: worth a refetch.
    UnknownKey,
    /// The token passed the rules and is not known revoked, but the feed is stale.
    Stale(Arc<AccessClaims>),
    /// Refused.
    Verify(VerifyError),
}

/// Fetches the keys now and every `interval`, retrying sooner while it fails.
async fn refresh_keys(keys: Arc<KeyRing>, interval: Duration) {
    let mut pause = Duration::from_millis(100);
    loop {
        match keys.refresh().await {
            Ok(_) => {
                pause = Duration::from_millis(100);
                tokio::time::sleep(interval).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, ?pause, "could not fetch authd's keys");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(interval);
            }
        }
    }
}
