//! Password hashing with argon2id, off the async runtime and bounded in concurrency.

use std::sync::Arc;

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _, Version,
    password_hash::{self, SaltString},
};
use tokio::sync::Semaphore;
use tracing::Span;

use super::{AuthError, credentials::Password};
use crate::config::Argon2Settings;

/// Hashes and verifies passwords on tokio's blocking pool, at most `concurrency` at a time, so
/// a burst of logins cannot starve the async runtime or exhaust memory (each hash holds
/// `memory_kib`).
#[derive(Clone)]
pub struct PasswordHasher {
    argon2: Argon2<'static>,
    permits: Arc<Semaphore>,
    /// Verified against when the email is unknown, so that case costs the same time.
    dummy_hash: Arc<str>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", self.argon2.params())
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// Builds the hasher and its dummy hash (one hash at the configured cost).
    pub fn new(settings: Argon2Settings, concurrency: usize) -> Result<Self, AuthError> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(internal)?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy_hash = hash_with(&argon2, b"authd dummy password: never matches a login")?;
        Ok(Self {
            argon2,
            permits: Arc::new(Semaphore::new(concurrency)),
            dummy_hash: dummy_hash.into(),
        })
    }

    /// The PHC string (algorithm, parameters, salt, hash) of a new password.
    pub async fn hash(&self, password: Password) -> Result<String, AuthError> {
        let argon2 = self.argon2.clone();
        self.run_blocking(move || hash_with(&argon2, password.expose()))
            .await?
    }

    /// Whether `password` matches `stored` (a PHC string). With `stored` absent it checks
    /// against the dummy hash and answers false, taking the same time as a real check.
    pub async fn verify(
        &self,
        password: Password,
        stored: Option<String>,
    ) -> Result<bool, AuthError> {
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let argon2 = self.argon2.clone();
        let matched = self
            .run_blocking(move || {
                let parsed = PasswordHash::new(&phc).map_err(internal)?;
                match argon2.verify_password(password.expose(), &parsed) {
                    Ok(()) => Ok(true),
                    Err(password_hash::Error::Password) => Ok(false),
                    Err(e) => Err(internal(e)),
                }
            })
            .await??;
        Ok(known && matched)
    }

    async fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let _permit = self.permits.acquire().await.map_err(internal)?;
        let span = Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(work))
            .await
            .map_err(internal)
    }
}

fn hash_with(argon2: &Argon2<'_>, password: &[u8]) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(internal)?;
    let salt = SaltString::encode_b64(&salt).map_err(internal)?;
    Ok(argon2
        .hash_password(password, &salt)
        .map_err(internal)?
        .to_string())
}

fn internal(err: impl std::fmt::Display) -> AuthError {
    AuthError::Internal(format!("password hashing: {err}").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordHasher {
        let settings = Argon2Settings {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        PasswordHasher::new(settings, 2).unwrap()
    }

    fn pw(s: &str) -> Password {
        Password::parse(s.into()).unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_no_other() {
        let hasher = cheap();
        let phc = hasher.hash(pw("correct horse")).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(
            hasher
                .verify(pw("correct horse"), Some(phc.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify(pw("battery staple"), Some(phc))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies_even_with_the_dummy_password() {
        let hasher = cheap();
        let dummy = pw("authd dummy password: never matches a login");
        assert!(!hasher.verify(dummy, None).await.unwrap());
    }

    #[tokio::test]
    async fn production_parameters_are_the_owasp_ones() {
        let hasher = PasswordHasher::new(Argon2Settings::default(), 1).unwrap();
        let phc = hasher.hash(pw("correct horse")).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(hasher.verify(pw("correct horse"), Some(phc)).await.unwrap());
    }

    #[tokio::test]
    async fn a_corrupt_stored_hash_is_an_internal_error() {
        let hasher = cheap();
        let result = hasher
            .verify(pw("x"), Some("not a phc string".into()))
            .await;
        assert!(matches!(result, Err(AuthError::Internal(_))));
    }
}
