//! The domain parts the server assembles from its settings, beside the session rules
//! themselves: the password hasher and the AdminService.

use std::sync::Arc;

use anyhow::Context as _;

use crate::{
    auth::{AdminAccess, PasswordHasher, RevokedSessions, UserAdmin},
    config::Config,
    grpc::admin::AdminGrpc,
    store::Store,
};

/// The AdminService, when `AUTH_ADMIN_CLIENTS` or `AUTH_ADMIN_TOKEN_FILE` is set: the same
/// user administration as the CLI, ending sessions on this replica's revocation set at once.
pub(super) fn admin_service(
    config: &Config,
    store: &Store,
    hasher: &PasswordHasher,
    revoked: &Arc<RevokedSessions>,
) -> anyhow::Result<Option<AdminGrpc>> {
    if !config.admin.enabled() {
        return Ok(None);
    }
    let access = AdminAccess::new(&config.admin, config.login.address_backoff)
        .context("while reading the admin credentials (AUTH_ADMIN_*)")?;
    let session_max = chrono::TimeDelta::from_std(config.sessions.session_max_lifetime)
        .unwrap_or(chrono::TimeDelta::MAX);
    let admin = UserAdmin::new(store.clone(), hasher.clone(), config.login.password_policy)
        .serving(Arc::clone(revoked), session_max);
    Ok(Some(AdminGrpc::new(Arc::new(access), Arc::new(admin))))
}

/// The password hasher, able to verify every argon2 parameter set the stored hashes use.
pub(super) async fn password_hasher(
    config: &Config,
    store: &Store,
) -> anyhow::Result<PasswordHasher> {
    let login = &config.login;
    let mut hasher = PasswordHasher::new(
        login.argon2,
        login.password_hash_concurrency,
        login.password_hash_queue,
    )
    .context("while preparing the password hasher")?;
    let in_use = store
        .password_hash_prefixes()
        .await
        .context("while reading which argon2 parameters the stored hashes use")?;
    hasher
        .cover(&in_use)
        .await
        .context("while preparing the password hasher")?;
    Ok(hasher)
}
