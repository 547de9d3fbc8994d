//! Sessions and their one refresh row: creating them at login, rotating, revoking, and the
//! clean-up of ended ones.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QuerySelect,
    QueryTrait, Statement, TransactionTrait, Value,
    sea_query::{Expr, IntoCondition},
};
use uuid::Uuid;

use super::{
    Store, StoreError,
    entity::{
        known_login_client, legacy_refresh_token, login_attempt, refresh_token, session, user,
    },
    rotation::{Credential, RefreshClock, Returning, Rotated, Rotation},
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

/// A session's refresh row with what decides a refresh, read when a rotation matched nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshState {
    /// The current token's generation.
    pub generation: i64,
    /// SHA-256 of the current token's secret.
    pub secret_hash: Vec<u8>,
    /// When the current token was issued.
    pub rotated_at: DateTime<Utc>,
    /// When the current token expires.
    pub expires_at: DateTime<Utc>,
    /// Whether the previous token's grace retry has been spent.
    pub retried: bool,
    /// The login.
    pub session_started_at: DateTime<Utc>,
    /// Whether the session is revoked.
    pub revoked: bool,
    /// Whether its user is disabled.
    pub user_disabled: bool,
    /// The session's user.
    pub user_id: Uuid,
}

/// A refresh token issued before the upgrade to one row per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyToken {
    /// Its session.
    pub session_id: Uuid,
    /// Whether it was already traded for a successor.
    pub used: bool,
}

/// One pass of the clean-up over the sessions: how many it deleted, and where the next pass
/// continues (`None`: it reached the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweptSessions {
    /// Sessions deleted, with their refresh rows.
    pub deleted: u64,
    /// The last session id looked at.
    pub next_after: Option<Uuid>,
}

const REFRESH_STATE: &str = "SELECT r.generation, r.secret_hash, r.rotated_at, r.expires_at, \
       r.retried, s.created_at, s.revoked_at, u.disabled_at, s.user_id \
     FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id \
       JOIN users u ON u.id = s.user_id \
     WHERE r.session_id = $1";

/// Sessions whose token expired or which reached their absolute end, in id order from `$1`.
const ENDED_SESSIONS: &str = "SELECT session_id FROM refresh_tokens \
     WHERE session_id > $1 AND (expires_at <= $2 OR session_started_at <= $3) \
     ORDER BY session_id LIMIT $4";

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

    /// Trades the presented current token for a successor whose secret hashes to
    /// `successor_hash`, expiring at `expires_at`: one conditional statement, shared with the
    /// other rotations waiting in line (`batcher`). `None`: it matched nothing and changed
    /// nothing; [`Self::refresh_state`] says why.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system(), session_id = %presented.session_id))]
    pub async fn rotate(
        &self,
        presented: &Credential,
        clock: RefreshClock,
        successor_hash: [u8; 32],
        expires_at: DateTime<Utc>,
    ) -> Result<Option<Rotated>, StoreError> {
        let rotation = Rotation {
            presented: presented.clone(),
            clock,
            successor_hash,
            expires_at,
        };
        self.rotations.rotate(rotation).await
    }

    /// Spends the one reuse-grace retry of the session's current token (named by `current`),
    /// if it was issued after `rotated_after`: one conditional statement. `None`: no retry.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system(), session_id = %current.session_id))]
    pub async fn retry_rotation(
        &self,
        current: &Credential,
        clock: RefreshClock,
        rotated_after: DateTime<Utc>,
    ) -> Result<Option<Rotated>, StoreError> {
        let statement = Returning::retry(current, clock, rotated_after);
        let _turn = self.write_turn().await?;
        let backend = self.db.get_database_backend();
        let statement = Statement::from_sql_and_values(backend, statement.sql, statement.values);
        self.db
            .query_one_raw(statement)
            .await?
            .map(|row| Rotated::read(&row))
            .transpose()
    }

    /// A session's refresh row with its session and user, whatever their state.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system(), session_id = %session_id))]
    pub async fn refresh_state(
        &self,
        session_id: Uuid,
    ) -> Result<Option<RefreshState>, StoreError> {
        let backend = self.db.get_database_backend();
        let query = Statement::from_sql_and_values(backend, REFRESH_STATE, [session_id.into()]);
        let Some(row) = self.db.query_one_raw(query).await? else {
            return Ok(None);
        };
        Ok(Some(RefreshState {
            generation: row.try_get_by_index(0)?,
            secret_hash: row.try_get_by_index(1)?,
            rotated_at: row.try_get_by_index(2)?,
            expires_at: row.try_get_by_index(3)?,
            retried: row.try_get_by_index(4)?,
            session_started_at: row.try_get_by_index(5)?,
            revoked: row.try_get_by_index::<Option<DateTime<Utc>>>(6)?.is_some(),
            user_disabled: row.try_get_by_index::<Option<DateTime<Utc>>>(7)?.is_some(),
            user_id: row.try_get_by_index(8)?,
        }))
    }

    /// The pre-upgrade token whose raw form hashes to `hash`, if one is still kept.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn legacy_token(&self, hash: &[u8; 32]) -> Result<Option<LegacyToken>, StoreError> {
        Ok(legacy_refresh_token::Entity::find()
            .filter(legacy_refresh_token::Column::TokenHash.eq(hash.to_vec()))
            .one(&self.db)
            .await?
            .map(|token| LegacyToken {
                session_id: token.session_id,
                used: token.used_at.is_some(),
            }))
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

    /// Deletes up to `limit` sessions after `after` (in id order) whose token expired by `now`
    /// or that began at or before `started_before`, with their refresh rows. The refresh table
    /// has no index on its expiry (a rotation would rewrite it every time), so the clean-up
    /// walks the primary key instead: each pass continues where the last one stopped.
    pub async fn delete_ended_sessions(
        &self,
        after: Uuid,
        now: DateTime<Utc>,
        started_before: DateTime<Utc>,
        limit: u64,
    ) -> Result<SweptSessions, StoreError> {
        let backend = self.db.get_database_backend();
        let values: [Value; 4] = [
            after.into(),
            now.into(),
            started_before.into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ];
        // A read, outside the write turn; an ended session cannot come back to life.
        let ended: Vec<Uuid> = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                ENDED_SESSIONS,
                values,
            ))
            .await?
            .iter()
            .map(|row| row.try_get_by_index(0))
            .collect::<Result<_, DbErr>>()?;
        let next_after = (ended.len() as u64 >= limit)
            .then(|| ended.last().copied())
            .flatten();
        if ended.is_empty() {
            return Ok(SweptSessions {
                deleted: 0,
                next_after,
            });
        }
        let _turn = self.write_turn().await?;
        let deleted = session::Entity::delete_many()
            .filter(session::Column::Id.is_in(ended))
            .exec(&self.db)
            .await?
            .rows_affected;
        Ok(SweptSessions {
            deleted,
            next_after,
        })
    }

    /// Deletes up to `limit` pre-upgrade tokens that expired by `now`.
    pub async fn delete_expired_legacy_tokens(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await?;
        let expired = legacy_refresh_token::Column::ExpiresAt.lte(now);
        let id = legacy_refresh_token::Column::Id;
        Ok(delete_batch::<legacy_refresh_token::Entity>(&self.db, id, expired, limit).await?)
    }

    /// Deletes up to `limit` login-attempt rows with no failure since `forget_before` and no
    /// block in force at `now`: the throttle has forgotten them.
    pub async fn delete_stale_login_attempts(
        &self,
        now: DateTime<Utc>,
        forget_before: DateTime<Utc>,
        limit: u64,
    ) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await?;
        let stale = Condition::all()
            .add(login_attempt::Column::LastFailureAt.lt(forget_before))
            .add(login_attempt::Column::BlockedUntil.lte(now));
        let email = login_attempt::Column::Email;
        Ok(delete_batch::<login_attempt::Entity>(&self.db, email, stale, limit).await?)
    }

    /// Deletes up to `limit` known login clients not seen since `before`.
    pub async fn delete_stale_known_login_clients(
        &self,
        before: DateTime<Utc>,
        limit: u64,
    ) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await?;
        use sea_orm::sea_query::ExprTrait as _;
        let (email, client) = (
            known_login_client::Column::Email,
            known_login_client::Column::Client,
        );
        // Its key has two columns: `(email, client) IN (SELECT email, client ... LIMIT n)`,
        // a row value both SQLite and PostgreSQL read.
        let batch = known_login_client::Entity::find()
            .select_only()
            .columns([email, client])
            .filter(known_login_client::Column::LastSuccessAt.lt(before))
            .limit(limit)
            .into_query();
        let key = Expr::tuple([Expr::col(email), Expr::col(client)]);
        Ok(known_login_client::Entity::delete_many()
            .filter(key.in_subquery(batch))
            .exec(&self.db)
            .await?
            .rows_affected)
    }
}

/// `DELETE FROM table WHERE key IN (SELECT key ... WHERE condition LIMIT limit)`: a bounded
/// batch that works the same on SQLite and PostgreSQL.
async fn delete_batch<E: EntityTrait>(
    db: &impl ConnectionTrait,
    key: E::Column,
    condition: impl IntoCondition,
    limit: u64,
) -> Result<u64, DbErr> {
    let batch = E::find()
        .select_only()
        .column(key)
        .filter(condition)
        .limit(limit)
        .into_query();
    Ok(E::delete_many()
        .filter(key.in_subquery(batch))
        .exec(db)
        .await?
        .rows_affected)
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
