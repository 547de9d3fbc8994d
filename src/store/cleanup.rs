//! The clean-up's deletions: ended sessions, expired pre-upgrade tokens, forgotten login
//! failures and known clients, each in bounded batches.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QuerySelect,
    QueryTrait, Statement, Value,
    sea_query::{Expr, IntoCondition},
};
use uuid::Uuid;

use super::{
    Store, StoreError,
    entity::{known_login_client, legacy_refresh_token, login_attempt, session},
};

/// One pass of the clean-up over the sessions: how many it deleted, and where the next pass
/// continues (`None`: it reached the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweptSessions {
    /// Sessions deleted, with their refresh rows.
    pub deleted: u64,
    /// The last session id looked at.
    pub next_after: Option<Uuid>,
}

/// Sessions whose token expired or which reached their absolute end, in id order from `$1`.
const ENDED_SESSIONS: &str = "SELECT session_id FROM refresh_tokens \
     WHERE session_id > $1 AND (expires_at <= $2 OR session_started_at <= $3) \
     ORDER BY session_id LIMIT $4";

impl Store {
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
