//! The session model, free of gRPC types: login, validate, and the users behind them.

/// One structured event for the audit trail: target `audit`, never a token, password or hash.
macro_rules! audit {
    ($($field:tt)+) => {
        tracing::info!(target: "audit", $($field)+)
    };
}

mod access_token;
mod admin_access;
mod credentials;
mod error;
mod key_files;
mod login;
mod password;
mod refresh;
mod refresh_token;
mod revocation;
mod self_service;
mod throttle;
mod users;

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

pub use access_token::{Acceptance, AccessClaims, TokenKeys, ValidatedToken};
pub use admin_access::{AdminAccess, AdminCaller, AdminCredentials};
pub use authd_verifier::VerifiedTokens;
pub use credentials::{Email, Password, PasswordRule};
pub use error::AuthError;
pub use key_files::{
    KeyError, generate_key_file, load_signing_key, load_verification_key, read_private,
};
pub use login::LoginClient;
pub use password::{PasswordHasher, Verification};
pub use refresh::Lifetimes;
pub use refresh_token::{
    LegacySecret, Opened, RefreshKey, RefreshToken, SessionSecret, SuccessorKey,
};
pub use revocation::{
    FeedCloser, FeedMessage, FeedPosition, Revocation, RevocationFeed, RevokedSessions,
    Subscription,
};
pub use throttle::{
    AccountTurns, AddressThrottle, FAILURE_MEMORY, KNOWN_CLIENT_MEMORY, throttle_key,
};
pub use users::{MAX_PAGE_SIZE, SessionPage, UserAdmin, UserRef};

use crate::{
    config::{Backoff, LoginSettings, PasswordPolicy, SessionSettings},
    store::{self, RevokedReason, Store},
};

/// Longest access token accepted for validation; ours are well under 1 KiB.
const MAX_ACCESS_TOKEN_BYTES: usize = 8 * 1024;

/// The credentials handed out by a login or a refresh.
#[derive(Debug)]
pub struct IssuedTokens {
    /// The signed JWT.
    pub access_token: String,
    /// Lifetime of the access token.
    pub access_token_ttl: Duration,
    /// The new refresh token.
    pub refresh_token: RefreshToken,
    /// Lifetime of the refresh token.
    pub refresh_token_ttl: Duration,
    /// The session both belong to.
    pub session_id: Uuid,
}

/// What a login or a refresh hands out, before the access token is signed.
struct Issued<'a> {
    user_id: Uuid,
    email: &'a str,
    session_id: Uuid,
    now: DateTime<Utc>,
    refresh_token: RefreshToken,
    refresh_expires_at: DateTime<Utc>,
}

/// The authentication rules, over the store, the password hasher and the token keys.
#[derive(Debug)]
pub struct Authenticator {
    store: Store,
    hasher: PasswordHasher,
    keys: TokenKeys,
    refresh_key: RefreshKey,
    verified: VerifiedTokens<ValidatedToken>,
    revoked: Arc<RevokedSessions>,
    access_token_ttl: Duration,
    lifetimes: Lifetimes,
    account_backoff: Backoff,
    addresses: AddressThrottle,
    turns: AccountTurns,
    grace: Option<ReuseGrace>,
    /// What a new password must be.
    policy: PasswordPolicy,
}

/// `AUTH_REFRESH_REUSE_GRACE`: one retry with the parent of a session's newest token, within
/// `window` of its rotation, gets that same newest token back; a second one is reuse.
#[derive(Debug)]
pub struct ReuseGrace {
    /// How long after a rotation a retry with the old token is forgiven.
    pub window: TimeDelta,
    /// Derives successors, so the same one can be handed out again.
    pub key: SuccessorKey,
}

/// The keys a session's tokens are signed and sealed with.
#[derive(Debug)]
pub struct SessionKeys {
    /// Signs and verifies access tokens.
    pub access: TokenKeys,
    /// Seals refresh tokens.
    pub refresh: RefreshKey,
    /// The reuse grace with its successor key, when `AUTH_REFRESH_REUSE_GRACE` is on.
    pub reuse_grace: Option<ReuseGrace>,
}

impl Authenticator {
    /// Assembles the domain from its parts.
    pub fn new(
        sessions: &SessionSettings,
        login: &LoginSettings,
        store: Store,
        keys: SessionKeys,
        hasher: PasswordHasher,
        revoked: Arc<RevokedSessions>,
    ) -> Self {
        let verified = VerifiedTokens::new(sessions.validate_cache_size, keys.access.rules());
        Self {
            store,
            hasher,
            keys: keys.access,
            refresh_key: keys.refresh,
            grace: keys.reuse_grace,
            verified,
            revoked,
            access_token_ttl: sessions.access_token_ttl,
            account_backoff: login.account_backoff,
            policy: login.password_policy,
            addresses: AddressThrottle::new(login.address_backoff),
            turns: AccountTurns::default(),
            lifetimes: Lifetimes {
                refresh_token: TimeDelta::from_std(sessions.refresh_token_ttl)
                    .unwrap_or(TimeDelta::MAX),
                session_max: TimeDelta::from_std(sessions.session_max_lifetime)
                    .unwrap_or(TimeDelta::MAX),
            },
        }
    }

    /// Checks an access token: no database query, pure CPU, and for a token seen before only
    /// a hash and two lookups (see [`VerifiedTokens`]).
    pub fn validate(&self, access_token: &str) -> Result<ValidatedToken, AuthError> {
        if access_token.is_empty() {
            return Err(AuthError::InvalidArgument {
                field: "access_token",
                problem: "must not be empty",
            });
        }
        if access_token.len() > MAX_ACCESS_TOKEN_BYTES {
            return Err(AuthError::InvalidArgument {
                field: "access_token",
                problem: "must be at most 8 KiB",
            });
        }
        // Seconds straight from the system clock: no calendar arithmetic on the hot path.
        let now = authd_verifier::unix_now();
        let token = self
            .verified
            .get_or_verify(access_token, now, || self.keys.verify(access_token))?;
        if self.revoked.contains(&token.session_id) {
            return Err(AuthError::SessionRevoked);
        }
        Ok(token)
    }

    /// Revokes the session of `token`, or every session of its user. Unknown, malformed,
    /// expired and already revoked tokens succeed silently: logout is idempotent.
    #[tracing::instrument(skip(self, token))]
    pub async fn logout(
        &self,
        token: Result<RefreshToken, AuthError>,
        all_sessions: bool,
    ) -> Result<(), AuthError> {
        let token = match token {
            Ok(token) => token,
            Err(AuthError::RefreshTokenInvalid) => return Ok(()),
            Err(e) => return Err(e),
        };
        // A sealed token names its session once its tag checks out: no query needed.
        let session_id = match self.refresh_key.open(&token) {
            Ok(Opened::Sealed(secret)) => secret.session_id,
            Ok(Opened::Legacy(legacy)) => match self.store.legacy_token(&legacy.hash()).await? {
                Some(found) => found.session_id,
                None => return Ok(()),
            },
            Err(AuthError::RefreshTokenInvalid) => return Ok(()),
            Err(e) => return Err(e),
        };
        if all_sessions {
            let now = store::now();
            let revoked = self
                .store
                .revoke_sessions_of_owner(session_id, RevokedReason::Logout, now)
                .await?;
            let Some((user_id, sessions)) = revoked else {
                return Ok(());
            };
            // Ours may have been revoked before; it must be refused here all the same.
            self.revoked
                .insert_all(sessions.iter().chain([&session_id]), now);
            audit!(event = "logout_all", %user_id, sessions = sessions.len());
        } else {
            let user_id = self.revoke(session_id, RevokedReason::Logout).await?;
            audit!(event = "logout", user_id = ?user_id, %session_id);
        }
        Ok(())
    }

    /// Revokes one session in the database and, at once, for Validate on this replica; the
    /// owner, if this call revoked it.
    async fn revoke(
        &self,
        session_id: Uuid,
        reason: RevokedReason,
    ) -> Result<Option<Uuid>, AuthError> {
        let now = store::now();
        let owner = self.store.revoke_session(session_id, reason, now).await?;
        self.revoked.insert(session_id, now);
        Ok(owner)
    }

    fn issue(&self, issued: Issued<'_>) -> Result<IssuedTokens, AuthError> {
        let access_token = self.keys.issue(
            issued.user_id,
            issued.session_id,
            issued.email,
            issued.now.timestamp(),
            self.access_token_ttl,
        )?;
        Ok(IssuedTokens {
            access_token,
            access_token_ttl: self.access_token_ttl,
            refresh_token: issued.refresh_token,
            refresh_token_ttl: (issued.refresh_expires_at - issued.now)
                .to_std()
                .unwrap_or_default(),
            session_id: issued.session_id,
        })
    }
}
