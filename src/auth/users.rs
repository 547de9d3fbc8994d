//! User administration: adding users, setting passwords, disabling accounts; the CLI's
//! commands run through here.

use uuid::Uuid;

use super::{AuthError, Email, Password, PasswordHasher};
use crate::{config::PasswordPolicy, store::Store};

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
        Ok(self.store.insert_user(email.as_str(), &hash).await?)
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
