//! Where each key lives: the configured file, or with SQLite one generated beside the database
//! on first start; loaded once at start-up, each failure naming its setting.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{
    auth::{
        Acceptance, RefreshKey, ReuseGrace, SessionKeys, SuccessorKey, TokenKeys, load_signing_key,
        load_verification_key,
    },
    config::{DatabaseSettings, SessionSettings},
    store,
};

/// The configured key files, and the SQLite database a missing one is generated beside.
pub(super) struct KeyFileLocations<'a> {
    sessions: &'a SessionSettings,
    sqlite_file: Option<PathBuf>,
}

impl<'a> KeyFileLocations<'a> {
    pub(super) fn new(sessions: &'a SessionSettings, database: &DatabaseSettings) -> Self {
        Self {
            sessions,
            sqlite_file: store::sqlite_file(&database.url),
        }
    }

    /// Where a key that is not configured is generated: beside the SQLite database, or
    /// nowhere (it must then be configured).
    fn generated(&self, name: &str) -> Option<PathBuf> {
        self.sqlite_file.as_ref().map(|db| db.with_file_name(name))
    }

    /// Every key a session needs.
    pub(super) fn session_keys(&self) -> anyhow::Result<SessionKeys> {
        Ok(SessionKeys {
            access: self.token_keys()?,
            refresh: self.refresh_key()?,
            reuse_grace: self.reuse_grace()?,
        })
    }

    /// The access-token keys: the signing key and the verify-only ones.
    fn token_keys(&self) -> anyhow::Result<TokenKeys> {
        let sessions = self.sessions;
        let signing = load_signing_key(
            sessions.keys.signing.as_deref(),
            self.generated("signing_key.pem").as_deref(),
        )
        .context("while loading the signing key (AUTH_SIGNING_KEY_FILE)")?;
        let verify_only = sessions
            .keys
            .verification
            .iter()
            .map(|path| load_verification_key(path))
            .collect::<Result<Vec<_>, _>>()
            .context("while loading a verification key (AUTH_VERIFICATION_KEY_FILES)")?;
        TokenKeys::new(
            &signing,
            &verify_only,
            &sessions.issuer,
            &sessions.audience,
            Acceptance {
                leeway: sessions.jwt_leeway,
                max_lifetime: sessions.access_token_max_lifetime,
            },
        )
        .context("while preparing the token keys")
    }

    /// The key that seals refresh tokens (`AUTH_REFRESH_KEY_FILE`).
    fn refresh_key(&self) -> anyhow::Result<RefreshKey> {
        let secret = self.secret_key(
            self.sessions.keys.refresh.as_deref(),
            "refresh_key.pem",
            "the refresh-token key (AUTH_REFRESH_KEY_FILE)",
        )?;
        Ok(RefreshKey::new(secret))
    }

    /// The reuse grace, when `AUTH_REFRESH_REUSE_GRACE` is set, with its successor key.
    fn reuse_grace(&self) -> anyhow::Result<Option<ReuseGrace>> {
        let Some(window) = self.sessions.refresh_reuse_grace else {
            return Ok(None);
        };
        let secret = self.secret_key(
            self.sessions.keys.refresh_grace.as_deref(),
            "refresh_grace_key.pem",
            "the reuse-grace key (AUTH_REFRESH_GRACE_KEY_FILE)",
        )?;
        Ok(Some(ReuseGrace {
            window: chrono::TimeDelta::from_std(window).unwrap_or(chrono::TimeDelta::MAX),
            key: SuccessorKey::new(secret),
        }))
    }

    /// The 32 secret bytes of a key file as `authd keys generate` writes it: the configured
    /// one, or `generated_name` beside the SQLite database, created on first start.
    fn secret_key(
        &self,
        configured: Option<&Path>,
        generated_name: &str,
        what: &str,
    ) -> anyhow::Result<[u8; 32]> {
        let key = load_signing_key(configured, self.generated(generated_name).as_deref())
            .with_context(|| format!("while loading {what}"))?;
        Ok(key.to_bytes())
    }
}
