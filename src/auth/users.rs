//! User administration: adding users, reading them, setting passwords, disabling and enabling
//! accounts, listing and ending their sessions. The AdminService and the CLI both run through
//! here, so the two cannot drift. Every change is audited with who made it.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use super::{AuthError, Email, Password, PasswordHasher, RevokedSessions};
use crate::{
    config::PasswordPolicy,
    store::{self, EndSessions, RevokedReason, SessionRecord, Store, UserKey, UserRecord},
};

/// The most sessions one page lists.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Sessions per page when the caller does not say.
const DEFAULT_PAGE_SIZE: u32 = 20;

/// How a caller names a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    /// By id.
    Id(Uuid),
    /// By email.
    Email(Email),
}

impl UserRef {
    fn key(&self) -> UserKey<'_> {
        match self {
            Self::Id(id) => UserKey::Id(*id),
            Self::Email(email) => UserKey::Email(email.as_str()),
        }
    }
}

/// One page of a user's sessions, and where the next one starts (`None`: this is the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPage {
    /// The sessions, newest first.
    pub sessions: Vec<SessionRecord>,
    /// The opaque token of the next page.
    pub next_page_token: Option<String>,
}

/// User administration: needs the store and the hasher, not the token keys.
#[derive(Debug)]
pub struct UserAdmin {
    store: Store,
    hasher: PasswordHasher,
    policy: PasswordPolicy,
    /// This replica's revocation set, when it serves Validate: sessions ended here stop
    /// validating here at once (other replicas learn it from the database).
    revoked: Option<Arc<RevokedSessions>>,
    /// A session's absolute lifetime: older ones are not listed.
    session_max: TimeDelta,
}

impl UserAdmin {
    /// Administers the users in `store`, hashing with `hasher` the passwords that `policy`
    /// admits.
    pub fn new(store: Store, hasher: PasswordHasher, policy: PasswordPolicy) -> Self {
        Self {
            store,
            hasher,
            policy,
            revoked: None,
            session_max: TimeDelta::MAX,
        }
    }

    /// Applies the sessions it ends to `revoked` at once, and lists only sessions younger
    /// than `session_max`.
    pub fn serving(mut self, revoked: Arc<RevokedSessions>, session_max: TimeDelta) -> Self {
        self.revoked = Some(revoked);
        self.session_max = session_max;
        self
    }

    /// Adds a user whose password meets the policy.
    pub async fn create_user(
        &self,
        email: Email,
        password: String,
        by: &str,
    ) -> Result<UserRecord, AuthError> {
        let password = Password::parse_new(password, &self.policy)?;
        let hash = self.hasher.hash(password).await?;
        let id = self.store.insert_user(email.as_str(), &hash).await?;
        audit!(event = "user_created", user_id = %id, by);
        self.user(&UserRef::Id(id)).await
    }

    /// The user `user` names.
    pub async fn user(&self, user: &UserRef) -> Result<UserRecord, AuthError> {
        self.store
            .user(user.key())
            .await?
            .ok_or(AuthError::UserNotFound)
    }

    /// Sets a new password that meets the policy and revokes every session of the user, in
    /// one transaction; returns how many sessions it ended.
    pub async fn set_password(
        &self,
        user: &UserRef,
        password: String,
        by: &str,
    ) -> Result<usize, AuthError> {
        let password = Password::parse_new(password, &self.policy)?;
        let hash = self.hasher.hash(password).await?;
        let (user_id, revoked) = self
            .store
            .set_password(user.key(), &hash, EndSessions::All)
            .await?
            .ok_or(AuthError::UserNotFound)?;
        self.apply(&revoked);
        audit!(event = "password_changed", %user_id, sessions_revoked = revoked.len(), by);
        Ok(revoked.len())
    }

    /// Disables a user so they can no longer log in, and ends their sessions. Idempotent.
    pub async fn disable_user(&self, user: &UserRef, by: &str) -> Result<UserRecord, AuthError> {
        let (record, revoked) = self
            .store
            .disable_user(user.key())
            .await?
            .ok_or(AuthError::UserNotFound)?;
        self.apply(&revoked);
        audit!(event = "user_disabled", user_id = %record.id, sessions_revoked = revoked.len(), by);
        Ok(record)
    }

    /// Lets a disabled user log in again. Idempotent.
    pub async fn enable_user(&self, user: &UserRef, by: &str) -> Result<UserRecord, AuthError> {
        let record = self
            .store
            .enable_user(user.key())
            .await?
            .ok_or(AuthError::UserNotFound)?;
        audit!(event = "user_enabled", user_id = %record.id, by);
        Ok(record)
    }

    /// A page of the user's live sessions, newest first. `page_size` 0 means the default;
    /// `page_token` is the previous page's `next_page_token`, or empty.
    pub async fn list_sessions(
        &self,
        user: &UserRef,
        page_size: u32,
        page_token: &str,
    ) -> Result<SessionPage, AuthError> {
        let user_id = self.user(user).await?.id;
        session_page(
            &self.store,
            user_id,
            self.session_max,
            page_size,
            page_token,
        )
        .await
    }

    /// Ends one session; ending an ended one is OK, an unknown one is NOT_FOUND.
    pub async fn revoke_session(&self, session_id: Uuid, by: &str) -> Result<(), AuthError> {
        let owner = self
            .store
            .session_owner(session_id)
            .await?
            .ok_or(AuthError::SessionNotFound)?;
        let now = store::now();
        self.store
            .revoke_session(session_id, RevokedReason::Admin, now)
            .await?;
        self.apply(&[session_id]);
        audit!(event = "session_revoked", user_id = %owner, %session_id, by);
        Ok(())
    }

    /// Ends every session of the user; returns how many were live.
    pub async fn revoke_user_sessions(&self, user: &UserRef, by: &str) -> Result<usize, AuthError> {
        let user_id = self.user(user).await?.id;
        let revoked = self
            .store
            .revoke_user_sessions(user_id, RevokedReason::Admin, store::now())
            .await?;
        self.apply(&revoked);
        audit!(event = "user_sessions_revoked", %user_id, sessions_revoked = revoked.len(), by);
        Ok(revoked.len())
    }

    /// Refuses `sessions` on this replica from now on.
    fn apply(&self, sessions: &[Uuid]) {
        if let Some(revoked) = &self.revoked {
            revoked.insert_all(sessions, store::now());
        }
    }
}

/// A page of `user_id`'s live sessions, newest first, none older than `session_max`.
/// `page_size` 0 means the default; `page_token` is the previous page's `next_page_token`,
/// or empty.
pub(super) async fn session_page(
    store: &Store,
    user_id: Uuid,
    session_max: TimeDelta,
    page_size: u32,
    page_token: &str,
) -> Result<SessionPage, AuthError> {
    let size = match page_size {
        0 => DEFAULT_PAGE_SIZE,
        1..=MAX_PAGE_SIZE => page_size,
        _ => {
            return Err(AuthError::InvalidArgument {
                field: "page_size",
                problem: "must be at most 100",
            });
        }
    };
    let after = match page_token {
        "" => None,
        token => Some(parse_page_token(token)?),
    };
    let now = store::now();
    let started_after = now
        .checked_sub_signed(session_max)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    // One more than asked: whether there is a next page, without a count.
    let mut sessions = store
        .live_sessions(user_id, now, started_after, u64::from(size) + 1, after)
        .await?;
    let next_page_token = if sessions.len() > size as usize {
        sessions.truncate(size as usize);
        sessions.last().map(page_token_of)
    } else {
        None
    };
    Ok(SessionPage {
        sessions,
        next_page_token,
    })
}

/// A page token: where the page's last session sits in the order, `created_at` (microseconds)
/// and id. Opaque to callers.
fn page_token_of(last: &SessionRecord) -> String {
    format!(
        "{}.{}",
        last.created_at.timestamp_micros(),
        last.id.simple()
    )
}

fn parse_page_token(token: &str) -> Result<(DateTime<Utc>, Uuid), AuthError> {
    let parsed = token.split_once('.').and_then(|(micros, id)| {
        let created_at = DateTime::<Utc>::from_timestamp_micros(micros.parse().ok()?)?;
        Some((created_at, Uuid::try_parse(id).ok()?))
    });
    parsed.ok_or(AuthError::InvalidArgument {
        field: "page_token",
        problem: "is not a page token of this listing",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_token_names_the_last_session_and_nothing_else_parses() {
        let last = SessionRecord {
            id: Uuid::new_v4(),
            created_at: store::now(),
            last_refreshed_at: None,
            expires_at: store::now(),
            login_client: store::ClientSeen::default(),
            last_refresh_client: store::ClientSeen::default(),
        };
        let token = page_token_of(&last);
        assert_eq!(
            parse_page_token(&token).unwrap(),
            (last.created_at, last.id)
        );
        for bad in ["", "x", "1.2", "abc.0f1e", &format!("{}.nope", 5)] {
            assert!(
                matches!(
                    parse_page_token(bad),
                    Err(AuthError::InvalidArgument {
                        field: "page_token",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }
}
