//! The session model, free of gRPC types: login, validate, and the users behind them.

mod access_token;
mod credentials;
mod error;
mod password;
mod refresh_token;

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use access_token::{
    ACCESS_TOKEN_TYPE, AccessClaims, KeyError, TokenKeys, load_or_generate_key,
};
pub use credentials::{Email, MAX_EMAIL_BYTES, MAX_PASSWORD_BYTES, Password};
pub use error::AuthError;
pub use password::PasswordHasher;
pub use refresh_token::RefreshToken;

use crate::{
    config::Config,
    store::{self, NewSession, Store},
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

    /// Disables a user so they can no longer log in; false if no such user.
    pub async fn disable_user(&self, email: Email) -> Result<bool, AuthError> {
        Ok(self.store.disable_user(email.as_str()).await?.is_some())
    }
}

/// Longest access token accepted for validation; ours are well under 1 KiB.
pub const MAX_ACCESS_TOKEN_BYTES: usize = 8 * 1024;

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

/// The authentication rules, over the store, the password hasher and the token keys.
#[derive(Debug)]
pub struct Authenticator {
    store: Store,
    hasher: PasswordHasher,
    keys: TokenKeys,
    access_token_ttl: Duration,
    refresh_token_ttl: Duration,
}

impl Authenticator {
    /// Assembles the domain from its parts.
    pub fn new(config: &Config, store: Store, keys: TokenKeys, hasher: PasswordHasher) -> Self {
        Self {
            store,
            hasher,
            keys,
            access_token_ttl: config.access_token_ttl,
            refresh_token_ttl: config.refresh_token_ttl,
        }
    }

    /// Checks the credentials and opens a session. Unknown email, wrong password and disabled
    /// user are one error, and all three run a full argon2 verification.
    #[tracing::instrument(skip_all)]
    pub async fn login(&self, email: Email, password: Password) -> Result<IssuedTokens, AuthError> {
        let user = self.store.user_by_email(email.as_str()).await?;
        let stored_hash = user.as_ref().map(|u| u.password_hash.clone());
        let password_matches = self.hasher.verify(password, stored_hash).await?;
        let user = match user {
            Some(user) if password_matches && user.disabled_at.is_none() => user,
            _ => return Err(AuthError::InvalidCredentials),
        };

        let now = store::now();
        let refresh_token = RefreshToken::generate()?;
        let token_expires_at = now + self.refresh_token_ttl;
        let session = NewSession {
            session_id: Uuid::new_v4(),
            user_id: user.id,
            created_at: now,
            expires_at: token_expires_at,
            token_hash: refresh_token.hash(),
            token_expires_at,
        };
        self.store.create_session(&session).await?;
        tracing::info!(user_id = %user.id, session_id = %session.session_id, "session opened");
        self.issue(user.id, &user.email, session.session_id, now, refresh_token)
    }

    /// Checks an access token: no database query, pure CPU.
    pub fn validate(&self, access_token: &str) -> Result<AccessClaims, AuthError> {
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
        self.keys.verify(access_token)
    }

    fn issue(
        &self,
        user_id: Uuid,
        email: &str,
        session_id: Uuid,
        now: DateTime<Utc>,
        refresh_token: RefreshToken,
    ) -> Result<IssuedTokens, AuthError> {
        let access_token = self.keys.issue(
            user_id,
            session_id,
            email,
            now.timestamp(),
            self.access_token_ttl,
        )?;
        Ok(IssuedTokens {
            access_token,
            access_token_ttl: self.access_token_ttl,
            refresh_token,
            refresh_token_ttl: self.refresh_token_ttl,
            session_id,
        })
    }
}
