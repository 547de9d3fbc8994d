//! Sessions and their one refresh row: creating them at login, rotating, revoking, and the
//! clean-up of ended ones.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Statement, TransactionTrait,
    Value,
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
    /// Where the login came from.
    pub client: ClientSeen,
}

/// The end user behind a login or a refresh, as stored: shown when sessions are listed, never
/// interpreted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSeen {
    /// The address, in text.
    pub address: Option<String>,
    /// The User-Agent, at most 1024 bytes.
    pub user_agent: Option<String>,
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
    /// An administrator ended it.
    Admin,
}

impl RevokedReason {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::Reuse => "reuse",
            Self::UserDisabled => "user_disabled",
            Self::PasswordChanged => "password_changed",
            Self::Admin => "admin",
        }
    }
}

/// A live session, as its user or an administrator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session's id.
    pub id: Uuid,
    /// The login.
    pub created_at: DateTime<Utc>,
    /// Its last rotation, if it ever rotated.
    pub last_refreshed_at: Option<DateTime<Utc>>,
    /// When its current refresh token expires.
    pub expires_at: DateTime<Utc>,
    /// Where the login came from.
    pub login_client: ClientSeen,
    /// Where the last refresh came from (nothing before the first refresh).
    pub last_refresh_client: ClientSeen,
}

/// A user's live sessions; [`Store::live_sessions`] adds the page's bounds and order.
const LIVE_SESSIONS: &str = "SELECT s.id, s.created_at, r.generation, r.rotated_at, r.expires_at, \
       s.login_address, s.login_user_agent, r.refreshed_address, r.refreshed_user_agent \
     FROM sessions s JOIN refresh_tokens r ON r.session_id = s.id \
     WHERE s.user_id = $1 AND s.revoked_at IS NULL AND r.expires_at > $2 AND s.created_at > $3";

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
            login_address: Set(new.client.address.clone()),
            login_user_agent: Set(new.client.user_agent.clone()),
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
            refreshed_address: Set(None),
            refreshed_user_agent: Set(None),
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
        let revoked = self
            .revoke_where(&self.db, session::Column::Id.eq(session_id), reason, now)
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
        let revoked = self.revoke_where(&self.db, condition, reason, now).await?;
        let ids = revoked.into_iter().map(|session| session.id).collect();
        Ok(Some((owned.user_id, ids)))
    }

    /// The owner of a session, and whether it is revoked; `None` if there is no such session.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system(), session_id = %session_id))]
    pub async fn session_owner(&self, session_id: Uuid) -> Result<Option<Uuid>, StoreError> {
        Ok(session::Entity::find_by_id(session_id)
            .one(&self.db)
            .await?
            .map(|session| session.user_id))
    }

    /// Revokes every live session of `user_id`; returns them.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system(), user_id = %user_id))]
    pub async fn revoke_user_sessions(
        &self,
        user_id: Uuid,
        reason: RevokedReason,
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let _turn = self.write_turn().await?;
        let condition = session::Column::UserId.eq(user_id);
        let revoked = self.revoke_where(&self.db, condition, reason, now).await?;
        Ok(revoked.into_iter().map(|session| session.id).collect())
    }

    /// Up to `limit` live sessions of `user_id` (not revoked, token unexpired at `now`, begun
    /// after `started_after`), newest first, continuing after `after` (a session's `created_at`
    /// and id) when given.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system(), user_id = %user_id))]
    pub async fn live_sessions(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
        started_after: DateTime<Utc>,
        limit: u64,
        after: Option<(DateTime<Utc>, Uuid)>,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut values: Vec<Value> = vec![user_id.into(), now.into(), started_after.into()];
        let mut sql = String::from(LIVE_SESSIONS);
        if let Some((created_at, id)) = after {
            sql.push_str(" AND (s.created_at < $4 OR (s.created_at = $4 AND s.id < $5))");
            values.extend([created_at.into(), id.into()]);
        }
        sql.push_str(&format!(
            " ORDER BY s.created_at DESC, s.id DESC LIMIT ${}",
            values.len() + 1
        ));
        values.push(i64::try_from(limit).unwrap_or(i64::MAX).into());
        let backend = self.db.get_database_backend();
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
            .await?;
        rows.iter()
            .map(|row| {
                let generation: i64 = row.try_get_by_index(2)?;
                let rotated_at: DateTime<Utc> = row.try_get_by_index(3)?;
                Ok(SessionRecord {
                    id: row.try_get_by_index(0)?,
                    created_at: row.try_get_by_index(1)?,
                    last_refreshed_at: (generation > FIRST_GENERATION).then_some(rotated_at),
                    expires_at: row.try_get_by_index(4)?,
                    login_client: ClientSeen {
                        address: row.try_get_by_index(5)?,
                        user_agent: row.try_get_by_index(6)?,
                    },
                    last_refresh_client: ClientSeen {
                        address: row.try_get_by_index(7)?,
                        user_agent: row.try_get_by_index(8)?,
                    },
                })
            })
            .collect()
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

impl Store {
    /// Revokes the live sessions matching `condition`, through `db` (the pool or the caller's
    /// transaction), and announces them to the other replicas; returns them. Every revocation
    /// goes through here, so the metric counts them all (inside a transaction that later
    /// fails to commit, it counts a revocation that did not happen: rare, and on the side of
    /// caution).
    pub(super) async fn revoke_where(
        &self,
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
        let ids: Vec<Uuid> = revoked.iter().map(|session| session.id).collect();
        super::announce::announce(db, &self.origin, &ids, now).await?;
        Ok(revoked)
    }
}
