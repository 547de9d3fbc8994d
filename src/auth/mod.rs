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
mod refresh;
mod refresh_token;
mod revocation;
mod throttle;
mod verified;

use std::{net::IpAddr, sync::Arc, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

pub use access_token::{
    Acceptance, AccessClaims, KeyError, TokenKeys, generate_key_file, load_signing_key,
    load_verification_key, read_private,
};
pub use credentials::{Email, MIN_PASSWORD_CHARS_FLOOR, Password, PasswordPolicy, PasswordRule};
pub use error::AuthError;
pub use password::{PasswordHasher, Verification};
pub use refresh::Lifetimes;
pub use refresh_token::{
    LegacySecret, Opened, RefreshKey, RefreshToken, SessionSecret, SuccessorKey,
};
pub use revocation::RevokedSessions;
pub use throttle::{
    AccountTurns, AddressThrottle, Backoff, FAILURE_MEMORY, KNOWN_CLIENT_MEMORY, throttle_key,
};
pub use verified::VerifiedTokens;

use crate::{
    config::Config,
    store::{self, FIRST_GENERATION, LoginReservation, NewSession, RevokedReason, Store},
};
use refresh_token::random_secret;

/// User administration for the CLI: needs the store and the hasher, not the token keys.
#[derive(Debug)]
pub struct UserAdmin {
    store: Store,
    hasher: PasswordHasher,
    policy: PasswordPolicy,
}

impl UserAdmin {
    /// Administers the users in `store`, hashing with `hasher` the passwords that `policy`
    /// admits.
    pub fn new(store: Store, hasher: PasswordHasher, policy: PasswordPolicy) -> Self {
        Self {
            store,
            hasher,
            policy,
        }
    }

    /// Adds a user whose password meets the policy.
    pub async fn add_user(&self, email: Email, password: String) -> Result<Uuid, AuthError> {
        let password = Password::parse_new(password, &self.policy)?;
        let hash = self.hasher.hash(password).await?;
        Ok(self.store.insert_user(email.as_str(), &hash).await?.id)
    }

    /// Sets a new password that meets the policy and revokes every session of the user, in
    /// one transaction; false if no such user.
    pub async fn set_password(&self, email: Email, password: String) -> Result<bool, AuthError> {
        let password = Password::parse_new(password, &self.policy)?;
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

/// How a login got past the throttles.
#[derive(Debug)]
enum Admission {
    /// Its attempt is counted against the account, as its `failures`-th failure.
    Reserved { failures: u32 },
    /// The account is blocked, but this address (its throttle key) logged in as it before.
    KnownClient { key: String },
}

/// Who is logging in, as far as the caller can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginClient {
    /// The end user's address, which throttling per address counts against.
    pub address: Option<IpAddr>,
    /// The end user's User-Agent, for the audit trail.
    pub user_agent: Option<String>,
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
    refresh_key: RefreshKey,
    verified: VerifiedTokens,
    revoked: Arc<RevokedSessions>,
    access_token_ttl: Duration,
    lifetimes: Lifetimes,
    account_backoff: Backoff,
    addresses: AddressThrottle,
    turns: AccountTurns,
    grace: Option<ReuseGrace>,
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

impl Authenticator {
    /// Assembles the domain from its parts.
    pub fn new(
        config: &Config,
        store: Store,
        keys: TokenKeys,
        refresh_key: RefreshKey,
        hasher: PasswordHasher,
        revoked: Arc<RevokedSessions>,
        grace: Option<ReuseGrace>,
    ) -> Self {
        Self {
            store,
            hasher,
            keys,
            refresh_key,
            verified: VerifiedTokens::new(config.validate_cache_size, config.jwt_leeway),
            revoked,
            access_token_ttl: config.access_token_ttl,
            account_backoff: config.account_backoff,
            grace,
            addresses: AddressThrottle::new(config.address_backoff),
            turns: AccountTurns::default(),
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
    ///
    /// Logins of one account take turns on this replica, and each reserves its attempt (per
    /// account in the database, per address here) before hashing: concurrent guesses count
    /// one each before any is checked, and a success gives its reservation back.
    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        email: Email,
        password: Password,
        login_client: LoginClient,
    ) -> Result<IssuedTokens, AuthError> {
        let client = login_client.address;
        let user_agent = login_client.user_agent.as_deref();
        let _turn = self.turns.take(email.as_str()).await?;
        let admission = self.admit(&email, client).await?;
        let backoff = self.account_backoff;

        let checked = async {
            let user = self.store.user_by_email(email.as_str()).await?;
            // A disabled user is checked against the dummy, as an unknown email is.
            let stored_hash = user
                .as_ref()
                .filter(|u| u.disabled_at.is_none())
                .map(|u| u.password_hash.clone());
            let verification = self.hasher.verify(password, stored_hash).await?;
            Ok::<_, AuthError>((user, verification))
        }
        .await;
        let (user, verification) = match checked {
            Ok(checked) => checked,
            Err(e) => {
                // Never checked: the attempt must not count against the account.
                self.release_address(client);
                if let Admission::Reserved { .. } = admission
                    && let Err(release) = self
                        .store
                        .release_login_attempt(email.as_str(), store::now(), |failures, at| {
                            backoff.block_end(failures, at)
                        })
                        .await
                {
                    tracing::warn!(error = %crate::error_chain(&release), "a login reservation was not given back");
                }
                return Err(e);
            }
        };
        let user = match user {
            Some(user) if verification != Verification::Mismatch && user.disabled_at.is_none() => {
                user
            }
            _ => {
                let failures = match admission {
                    Admission::Reserved { failures } => Some(failures),
                    Admission::KnownClient { ref key } => {
                        // Trusted once, wrong now: it meets the account's block from here on.
                        self.store.forget_login_client(email.as_str(), key).await?;
                        None
                    }
                };
                audit!(event = "login_failed", email = email.as_str(), failures, client = ?client, user_agent = ?user_agent);
                crate::metrics::login_failed();
                return Err(AuthError::InvalidCredentials);
            }
        };
        self.release_address(client);
        match admission {
            Admission::Reserved { .. } => self.store.clear_login_failures(email.as_str()).await?,
            // The block stays for everyone else: the flood's delays keep growing.
            Admission::KnownClient { .. } => {}
        }
        if let Some(ip) = client {
            let key = throttle_key(ip).to_string();
            self.store
                .remember_login_client(email.as_str(), &key, store::now())
                .await?;
        }
        if let Verification::MatchRehashed(new_hash) = verification {
            // Conditional on the old hash, so a concurrent password change is never undone.
            let replaced = self
                .store
                .replace_password_hash(user.id, &user.password_hash, &new_hash)
                .await?;
            if replaced {
                audit!(event = "password_rehashed", user_id = %user.id);
            }
        }

        let now = store::now();
        let secret = random_secret()?;
        let expires_at = self
            .lifetimes
            .token_expiry(now)
            .min(self.lifetimes.session_end(now));
        let session = NewSession {
            session_id: Uuid::new_v4(),
            user_id: user.id,
            user_seen_at: user.updated_at,
            created_at: now,
            secret_hash: refresh::secret_hash(&secret),
            expires_at,
        };
        if !self.store.create_session(&session).await? {
            // Disabled, or its password changed, while this login was hashing: that wins.
            audit!(event = "login_superseded", user_id = %user.id);
            crate::metrics::login_failed();
            return Err(AuthError::InvalidCredentials);
        }
        audit!(event = "login", user_id = %user.id, session_id = %session.session_id, client = ?client, user_agent = ?user_agent);
        let issued = Issued {
            user_id: user.id,
            email: &user.email,
            session_id: session.session_id,
            now,
            refresh_token: self
                .refresh_key
                .seal(session.session_id, FIRST_GENERATION, &secret),
            refresh_expires_at: expires_at,
        };
        self.issue(issued)
    }

    /// Lets a login through the throttles, before its password is checked: reserves its
    /// attempt per address and per account. While the account is blocked, a login from an
    /// address that logged in as it before (within [`KNOWN_CLIENT_MEMORY`]) still goes
    /// through, uncounted: a flood of guesses must not lock the owner out.
    async fn admit(&self, email: &Email, client: Option<IpAddr>) -> Result<Admission, AuthError> {
        // Throttled before any hashing, and the same way whether or not the email exists.
        let started = store::now();
        if let Some(ip) = client
            && let Err(until) = self.addresses.reserve(ip, started)
        {
            return Err(self.throttled(email, client, until, started));
        }
        let backoff = self.account_backoff;
        let admitted = async {
            let reserved = self
                .store
                .reserve_login_attempt(
                    email.as_str(),
                    started,
                    started - FAILURE_MEMORY,
                    |failures, at| backoff.block_end(failures, at),
                )
                .await?;
            let until = match reserved {
                LoginReservation::Granted { failures } => {
                    return Ok(Admission::Reserved { failures });
                }
                LoginReservation::Blocked { until } => until,
            };
            if let Some(ip) = client {
                let key = throttle_key(ip).to_string();
                let since = started - KNOWN_CLIENT_MEMORY;
                if self
                    .store
                    .is_known_login_client(email.as_str(), &key, since)
                    .await?
                {
                    audit!(event = "login_known_client_past_block", email = email.as_str(), client = ?client);
                    return Ok(Admission::KnownClient { key });
                }
            }
            Err(self.throttled(email, client, until, started))
        }
        .await;
        if admitted.is_err() {
            self.release_address(client);
        }
        admitted
    }

    /// The refusal of a throttled login, audited and counted.
    fn throttled(
        &self,
        email: &Email,
        client: Option<IpAddr>,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> AuthError {
        audit!(event = "login_throttled", email = email.as_str(), client = ?client);
        crate::metrics::login_throttled();
        let retry_after = (until - now).to_std().unwrap_or_default();
        AuthError::Throttled { retry_after }
    }

    /// Gives back the address's reservation of a login that succeeded or was never checked.
    fn release_address(&self, client: Option<IpAddr>) {
        if let Some(ip) = client {
            self.addresses.release(ip, store::now());
        }
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
            for session_id in sessions.iter().chain([&session_id]) {
                self.revoked.insert(*session_id, now);
            }
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
