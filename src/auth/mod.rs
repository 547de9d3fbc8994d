//! The session model, free of gRPC types: login, validate, and the users behind them.

/// One structured event for the audit trail: target `audit`, never a token, password or hash.
macro_rules! audit {
    ($($field:tt)+) => {
        tracing::info!(target: "audit", $($field)+)
    };
}

mod access_token;
mod credentials;
mod error;
mod password;
mod refresh_token;
mod revocation;
mod throttle;
mod verified;

use std::{net::IpAddr, sync::Arc, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

pub use access_token::{
    AccessClaims, KeyError, TokenKeys, generate_key_file, load_signing_key, load_verification_key,
};
pub use credentials::{Email, Password};
pub use error::AuthError;
pub use password::{PasswordHasher, Verification};
pub use refresh_token::{RefreshToken, SuccessorKey};
pub use revocation::RevokedSessions;
pub use throttle::{AddressThrottle, Backoff};
pub use verified::VerifiedTokens;

use crate::{
    config::Config,
    store::{self, Lifetimes, NewSession, RevokedReason, Rotation, Store, TokenRecord},
};

/// User administration for the CLI: needs the store and the hasher, not the token keys.
#[derive(Debug)]
pub struct UserAdmin {
    store: Store,
    hasher: PasswordHasher,
}

impl UserAdmin {
    /// Administers the users in `store`, hashing with `hasher`.
    pub fn new(store: Store, hasher: PasswordHasher) -> Self {
        Self { store, hasher }
    }

    /// Adds a user; the password must be 8 to 1024 bytes (see [`Password::parse_new`]).
    pub async fn add_user(&self, email: Email, password: Password) -> Result<Uuid, AuthError> {
        let hash = self.hasher.hash(password).await?;
        Ok(self.store.insert_user(email.as_str(), &hash).await?.id)
    }

    /// Sets a new password (8 to 1024 bytes) and revokes every session of the user, in one
    /// transaction; false if no such user.
    pub async fn set_password(&self, email: Email, password: Password) -> Result<bool, AuthError> {
        let hash = self.hasher.hash(password).await?;
        let changed = self.store.set_password(email.as_str(), &hash).await?;
        if let Some(user_id) = changed {
            audit!(event = "password_changed", %user_id);
        }
        Ok(changed.is_some())
    }

    /// Disables a user so they can no longer log in; false if no such user.
    pub async fn disable_user(&self, email: Email) -> Result<bool, AuthError> {
        let disabled = self.store.disable_user(email.as_str()).await?;
        if let Some(user_id) = disabled {
            audit!(event = "user_disabled", %user_id);
        }
        Ok(disabled.is_some())
    }
}

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
    verified: VerifiedTokens,
    revoked: Arc<RevokedSessions>,
    access_token_ttl: Duration,
    lifetimes: Lifetimes,
    account_backoff: Backoff,
    addresses: AddressThrottle,
    grace: Option<ReuseGrace>,
}

/// `AUTH_REFRESH_REUSE_GRACE`: a retry with the parent of a session's newest token, within
/// `window` of its rotation, gets that same newest token back.
#[derive(Debug)]
pub struct ReuseGrace {
    /// How long after a rotation a retry with the old token is forgiven.
    pub window: TimeDelta,
    /// Derives successors, so the same one can be handed out again.
    pub key: SuccessorKey,
}

impl Authenticator {
    /// Assembles the domain from its parts.
    pub fn new(
        config: &Config,
        store: Store,
        keys: TokenKeys,
        hasher: PasswordHasher,
        revoked: Arc<RevokedSessions>,
        grace: Option<ReuseGrace>,
    ) -> Self {
        Self {
            store,
            hasher,
            keys,
            verified: VerifiedTokens::new(config.validate_cache_size, config.jwt_leeway),
            revoked,
            access_token_ttl: config.access_token_ttl,
            account_backoff: config.account_backoff,
            grace,
            addresses: AddressThrottle::new(config.address_backoff),
            lifetimes: Lifetimes {
                refresh_token: TimeDelta::from_std(config.refresh_token_ttl)
                    .unwrap_or(TimeDelta::MAX),
                session_max: TimeDelta::from_std(config.session_max_lifetime)
                    .unwrap_or(TimeDelta::MAX),
            },
        }
    }

    /// Checks the credentials and opens a session. Unknown email, wrong password and disabled
    /// user are one error, and all three run a full argon2 verification.
    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        email: Email,
        password: Password,
        client: Option<IpAddr>,
    ) -> Result<IssuedTokens, AuthError> {
        // Throttled before any hashing, and the same way whether or not the email exists.
        let started = store::now();
        let account_block = self.store.login_blocked_until(email.as_str()).await?;
        let address_block = client.and_then(|ip| self.addresses.blocked_until(ip, started));
        let blocked = account_block.into_iter().chain(address_block).max();
        if let Some(until) = blocked.filter(|until| *until > started) {
            audit!(event = "login_throttled", email = email.as_str(), client = ?client);
            crate::metrics::login_throttled();
            let retry_after = (until - started).to_std().unwrap_or_default();
            return Err(AuthError::Throttled { retry_after });
        }

        let user = self.store.user_by_email(email.as_str()).await?;
        let stored_hash = user.as_ref().map(|u| u.password_hash.clone());
        let verification = self.hasher.verify(password, stored_hash).await?;
        let user = match user {
            Some(user) if verification != Verification::Mismatch && user.disabled_at.is_none() => {
                user
            }
            _ => {
                let now = store::now();
                let backoff = self.account_backoff;
                let failures = self
                    .store
                    .record_login_failure(
                        email.as_str(),
                        now,
                        now - throttle::FAILURE_MEMORY,
                        |n| backoff.delay(n),
                    )
                    .await?;
                if let Some(ip) = client {
                    self.addresses.record_failure(ip, now);
                }
                audit!(event = "login_failed", email = email.as_str(), failures, client = ?client);
                crate::metrics::login_failed();
                return Err(AuthError::InvalidCredentials);
            }
        };
        if account_block.is_some() {
            self.store.clear_login_failures(email.as_str()).await?;
        }
        if let Verification::MatchRehashed(new_hash) = verification {
            // Conditional on the old hash, so a concurrent password change is never undone.
            self.store
                .replace_password_hash(user.id, &user.password_hash, &new_hash)
                .await?;
            audit!(event = "password_rehashed", user_id = %user.id);
        }

        let now = store::now();
        let refresh_token = RefreshToken::generate()?;
        let token_expires_at = self.lifetimes.token_expiry(now, now);
        let session = NewSession {
            session_id: Uuid::new_v4(),
            user_id: user.id,
            created_at: now,
            expires_at: token_expires_at,
            token_hash: refresh_token.hash(),
            token_expires_at,
        };
        self.store.create_session(&session).await?;
        audit!(event = "login", user_id = %user.id, session_id = %session.session_id);
        let issued = Issued {
            user_id: user.id,
            email: &user.email,
            session_id: session.session_id,
            now,
            refresh_token,
            refresh_expires_at: token_expires_at,
        };
        self.issue(issued)
    }

    /// Checks an access token: no database query, pure CPU, and for a token seen before only
    /// a hash and two lookups (see [`VerifiedTokens`]).
    pub fn validate(&self, access_token: &str) -> Result<Arc<AccessClaims>, AuthError> {
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
        let now = Utc::now().timestamp();
        let claims = self
            .verified
            .get_or_verify(access_token, now, || self.keys.verify(access_token))?;
        if self.revoked.contains(&claims.sid) {
            return Err(AuthError::SessionRevoked);
        }
        Ok(claims)
    }

    /// Trades a refresh token for a new pair in the same session. A token presented twice
    /// revokes its session.
    #[tracing::instrument(skip_all)]
    pub async fn refresh(&self, token: RefreshToken) -> Result<IssuedTokens, AuthError> {
        let now = store::now();
        let successor = match &self.grace {
            Some(grace) => grace.key.successor_of(&token),
            None => RefreshToken::generate()?,
        };
        let rotation = self
            .store
            .rotate_refresh_token(&token.hash(), &successor.hash(), now, self.lifetimes)
            .await?;
        match rotation {
            Rotation::Rotated {
                session_id,
                user_id,
                email,
                expires_at,
            } => {
                audit!(event = "refresh", %user_id, %session_id);
                self.issue(Issued {
                    user_id,
                    email: &email,
                    session_id,
                    now,
                    refresh_token: successor,
                    refresh_expires_at: expires_at,
                })
            }
            Rotation::SessionRevoked => Err(AuthError::SessionRevoked),
            Rotation::SessionExpired => Err(AuthError::SessionExpired),
            Rotation::NotCurrent => self.not_current(&token, now).await,
        }
    }

    /// A token that did not rotate: a forgiven retry within the reuse grace, or the reason it
    /// is refused. A reused token revokes its session.
    async fn not_current(
        &self,
        presented: &RefreshToken,
        now: DateTime<Utc>,
    ) -> Result<IssuedTokens, AuthError> {
        let Some(TokenRecord { token, session }) =
            self.store.token_record(&presented.hash()).await?
        else {
            return Err(AuthError::RefreshTokenInvalid);
        };
        if let Some(used_at) = token.used_at {
            if let Some(again) = self
                .grace_retry(presented, &token, &session, used_at, now)
                .await?
            {
                return Ok(again);
            }
            let newly = self.revoke(session.id, RevokedReason::Reuse).await?;
            crate::metrics::refresh_token_reused();
            tracing::warn!(
                target: "audit",
                event = "refresh_token_reused",
                user_id = %session.user_id,
                session_id = %session.id,
                newly_revoked = newly,
                "refresh token reuse detected: session revoked"
            );
            return Err(AuthError::RefreshTokenReused);
        }
        let session_over = self.lifetimes.session_end(session.created_at) <= now;
        Err(if session.revoked_at.is_some() {
            AuthError::SessionRevoked
        } else if session_over {
            AuthError::SessionExpired
        } else if token.expires_at <= now {
            AuthError::RefreshTokenExpired
        } else if session.expires_at <= now {
            AuthError::SessionExpired
        } else {
            // The conditional update and this read disagree: not expected on either backend.
            AuthError::Internal("a current refresh token failed to rotate".into())
        })
    }

    /// Hands out again the successor of `presented` when the grace allows it: the token was
    /// rotated within the window, its successor is still the session's newest token, and the
    /// session is alive. Nothing is written: no new refresh token is minted.
    async fn grace_retry(
        &self,
        presented: &RefreshToken,
        token: &store::entity::refresh_token::Model,
        session: &store::entity::session::Model,
        used_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<IssuedTokens>, AuthError> {
        let Some(grace) = &self.grace else {
            return Ok(None);
        };
        if now - used_at > grace.window || session.revoked_at.is_some() || session.expires_at <= now
        {
            return Ok(None);
        }
        let Some(successor_row) = self.store.successor_of(token.id).await? else {
            return Ok(None);
        };
        let successor = grace.key.successor_of(presented);
        let newest = successor_row.used_at.is_none() && successor_row.expires_at > now;
        if !newest || successor_row.token_hash != successor.hash() {
            return Ok(None);
        }
        let Some(user) = self.store.user_by_id(session.user_id).await? else {
            return Ok(None);
        };
        audit!(event = "refresh_retried", user_id = %user.id, session_id = %session.id);
        self.issue(Issued {
            user_id: user.id,
            email: &user.email,
            session_id: session.id,
            now,
            refresh_token: successor,
            refresh_expires_at: successor_row.expires_at,
        })
        .map(Some)
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
        let Some(TokenRecord { session, .. }) = self.store.token_record(&token.hash()).await?
        else {
            return Ok(());
        };
        if all_sessions {
            let now = store::now();
            let revoked = self
                .store
                .revoke_user_sessions(session.user_id, RevokedReason::Logout, now)
                .await?;
            for session_id in &revoked {
                self.revoked.insert(*session_id, now);
            }
            audit!(event = "logout_all", user_id = %session.user_id, sessions = revoked.len());
        } else {
            self.revoke(session.id, RevokedReason::Logout).await?;
            audit!(event = "logout", user_id = %session.user_id, session_id = %session.id);
        }
        Ok(())
    }

    /// Revokes one session in the database and, at once, for Validate on this replica.
    async fn revoke(&self, session_id: Uuid, reason: RevokedReason) -> Result<bool, AuthError> {
        let now = store::now();
        let newly = self.store.revoke_session(session_id, reason, now).await?;
        self.revoked.insert(session_id, now);
        Ok(newly)
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
