//! Sessions and their one refresh row: creating them at login, rotating, revoking, and the
//! clean-up of ended ones.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, TransactionTrait,
    sea_query::{Expr, IntoCondition},
};
use uuid::Uuid;

use super::{
    Store, StoreError,
    entity::{refresh_token, session, user},
};

/// A session to open at login, with its first refresh token.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The session's id, also the `sid` claim.
    pub session_id: Uuid,
    /// Whose session it is.
    pub user_id: Uuid,
    /// The user's `updated_at` when the login read the hash it verified: the session is opened
    /// only if the user is unchanged since (no new password, not disabled) when it is written.
    pub user_seen_at: DateTime<Utc>,
    /// When the login happened.
    pub created_at: DateTime<Utc>,
    /// SHA-256 of the first token's secret (generation 1).
    pub secret_hash: [u8; 32],
    /// When the first token expires.
    pub expires_at: DateTime<Utc>,
}

/// The generation a session's first token carries. Generation 0 is a token issued before the
/// upgrade to one row per session.
pub const FIRST_GENERATION: i64 = 1;

/// Why a session was revoked, as stored in `sessions.revoked_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokedReason {
    /// The user logged out.
    Logout,
    /// A used refresh token was presented again: the session's tokens may be stolen.
    Reuse,
    /// The user was disabled.
    UserDisabled,
    /// The user's password was changed.
    PasswordChanged,
}

impl RevokedReason {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::Reuse => "reuse",
            Self::UserDisabled => "user_disabled",
            Self::PasswordChanged => "password_changed",
        }
    }
}

impl Store {
    /// Opens a session with its refresh row, in one transaction and only while the user is
    /// enabled and unchanged since the login read it; false otherwise. A password change and a
    /// disable both move `updated_at`; a rehash of the same password does not.
    ///
    /// The first statement locks the user's row: a disable or password change that committed
    /// first makes it match nothing, and one that comes later waits for this transaction and
    /// then revokes the new session with the others. No login racing them survives them.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system(), session_id = %new.session_id))]
    pub async fn create_session(&self, new: &NewSession) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await?;
        let txn = self.db.begin().await?;
        let still_valid = user::Entity::update_many()
            .col_expr(user::Column::UpdatedAt, Expr::col(user::Column::UpdatedAt))
            .filter(user::Column::Id.eq(new.user_id))
            .filter(user::Column::DisabledAt.is_null())
            .filter(user::Column::UpdatedAt.eq(new.user_seen_at))
            .exec(&txn)
            .await?
            .rows_affected;
        if still_valid == 0 {
            txn.rollback().await?;
            return Ok(false);
        }
        session::Entity::insert(session::ActiveModel {
            id: Set(new.session_id),
            user_id: Set(new.user_id),
            created_at: Set(new.created_at),
            revoked_at: Set(None),
            revoked_reason: Set(None),
        })
        .exec_without_returning(&txn)
        .await?;
        refresh_token::Entity::insert(refresh_token::ActiveModel {
            session_id: Set(new.session_id),
            user_id: Set(new.user_id),
            session_started_at: Set(new.created_at),
            generation: Set(FIRST_GENERATION),
            secret_hash: Set(new.secret_hash.to_vec()),
            rotated_at: Set(new.created_at),
            expires_at: Set(new.expires_at),
            retried: Set(false),
        })
        .exec_without_returning(&txn)
        .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Revokes one session; its owner, or `None` if it was already revoked (or does not
    /// exist).
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system(), session_id = %session_id))]
    pub async fn revoke_session(
        &self,
        session_id: Uuid,
        reason: RevokedReason,
        now: DateTime<Utc>,
    ) -> Result<Option<Uuid>, StoreError> {
        let _turn = self.write_turn().await?;
        let revoked =
            revoke_sessions_where(&self.db, session::Column::Id.eq(session_id), reason, now)
                .await?;
        Ok(revoked.first().map(|session| session.user_id))
    }

    /// Revokes every live session of the user who owns `session_id`; returns the owner and
    /// the sessions this revoked (`None` if there is no such session).
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system(), session_id = %session_id))]
    pub async fn revoke_sessions_of_owner(
        &self,
        session_id: Uuid,
        reason: RevokedReason,
        now: DateTime<Utc>,
    ) -> Result<Option<(Uuid, Vec<Uuid>)>, StoreError> {
        let Some(owned) = session::Entity::find_by_id(session_id)
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let _turn = self.write_turn().await?;
        let condition = session::Column::UserId.eq(owned.user_id);
        let revoked = revoke_sessions_where(&self.db, condition, reason, now).await?;
        let ids = revoked.into_iter().map(|session| session.id).collect();
        Ok(Some((owned.user_id, ids)))
    }

    /// Sessions revoked after `since`, with when.
    #[tracing::instrument(skip(self), level = "trace")]
    pub async fn sessions_revoked_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(Uuid, DateTime<Utc>)>, StoreError> {
        Ok(session::Entity::find()
            .filter(session::Column::RevokedAt.gt(since))
            .all(&self.db)
            .await?
            .into_iter()
            .filter_map(|s| Some((s.id, s.revoked_at?)))
            .collect())
    }
}

/// Revokes the live sessions matching `condition`; returns them. Every revocation goes
/// through here, so the metric counts them all (inside a transaction that later fails to
/// commit, it counts a revocation that did not happen: rare, and on the side of caution).
pub(super) async fn revoke_sessions_where(
    db: &impl ConnectionTrait,
    condition: impl IntoCondition,
    reason: RevokedReason,
    now: DateTime<Utc>,
) -> Result<Vec<session::Model>, DbErr> {
    let revoked = session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, now.into())
        .col_expr(session::Column::RevokedReason, reason.as_str().into())
        .filter(condition)
        .filter(session::Column::RevokedAt.is_null())
        .exec_with_returning(db)
        .await?;
    crate::metrics::sessions_revoked(reason.as_str(), revoked.len() as u64);
    Ok(revoked)
}
