//! Refreshing a session: its rotation (the statement itself is in `rotation`), the one retry
//! the reuse grace allows, and what the domain needs to know when a rotation matched nothing.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Statement};
use uuid::Uuid;

use super::{
    Store, StoreError,
    entity::legacy_refresh_token,
    rotation::{Credential, RefreshClock, Returning, Rotated, Rotation},
    sessions::ClientSeen,
};

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationOutcome {
    /// The presented token was the session's current one: its successor is in place.
    Rotated(Rotated),
    /// The rotation matched nothing and changed nothing; the session's state, read right
    /// after, says why (`None`: no such session).
    Refused(Option<RefreshState>),
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

const REFRESH_STATE: &str = "SELECT r.generation, r.secret_hash, r.rotated_at, r.expires_at, \
       r.retried, s.created_at, s.revoked_at, u.disabled_at, s.user_id \
     FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id \
       JOIN users u ON u.id = s.user_id \
     WHERE r.session_id = $1";

impl Store {
    /// Trades the presented current token for a successor whose secret hashes to
    /// `successor_hash`, expiring at `expires_at`: one conditional statement, shared with the
    /// other rotations waiting in line (`batcher`). When it matches nothing, one read of the
    /// session's state follows, so the domain can say why without asking again.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system(), session_id = %presented.session_id))]
    pub async fn rotate(
        &self,
        presented: &Credential,
        clock: RefreshClock,
        successor_hash: [u8; 32],
        expires_at: DateTime<Utc>,
        client: ClientSeen,
    ) -> Result<RotationOutcome, StoreError> {
        let rotation = Rotation {
            presented: presented.clone(),
            clock,
            successor_hash,
            expires_at,
            client,
        };
        Ok(match self.rotations.rotate(rotation).await? {
            Some(rotated) => RotationOutcome::Rotated(rotated),
            None => RotationOutcome::Refused(self.refresh_state(presented.session_id).await?),
        })
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
    async fn refresh_state(&self, session_id: Uuid) -> Result<Option<RefreshState>, StoreError> {
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
}
