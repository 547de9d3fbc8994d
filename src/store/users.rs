//! Users and their failed logins: the queries of login, the CLI and user administration.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, SqlErr, TransactionTrait};
use uuid::Uuid;

use super::{
    Store, StoreError,
    entity::{known_login_client, login_attempt, session, user},
    missing, now,
    sessions::{RevokedReason, revoke_sessions_where},
};

/// The outcome of [`Store::reserve_login_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginReservation {
    /// The attempt may check its password; it is counted as the `failures`-th failure until
    /// a success clears the count.
    Granted {
        /// The account's failures, this attempt included.
        failures: u32,
    },
    /// An earlier failure blocks attempts until then.
    Blocked {
        /// When the block ends.
        until: DateTime<Utc>,
    },
}

/// A user, as a login needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginUser {
    /// The user's id.
    pub id: Uuid,
    /// The normalised email.
    pub email: String,
    /// The PHC string of the password's hash.
    pub password_hash: String,
    /// Whether the user is disabled.
    pub disabled: bool,
    /// When the password or the disabled state last changed: the login's session opens only
    /// if neither changed since it read them.
    pub updated_at: DateTime<Utc>,
}

impl Store {
    /// The user with this (normalised) email.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn user_by_email(&self, email: &str) -> Result<Option<LoginUser>, StoreError> {
        Ok(user::Entity::find()
            .filter(user::Column::Email.eq(email))
            .one(&self.db)
            .await?
            .map(|user| LoginUser {
                id: user.id,
                email: user.email,
                password_hash: user.password_hash,
                disabled: user.disabled_at.is_some(),
                updated_at: user.updated_at,
            }))
    }

    /// The distinct PHC prefixes (algorithm, version and parameters, up to the salt) of the
    /// stored password hashes: the parameter sets in use. One scan of `users`.
    #[tracing::instrument(skip(self), level = "debug")]
    pub async fn password_hash_prefixes(&self) -> Result<Vec<String>, StoreError> {
        use sea_orm::{ConnectionTrait as _, DbBackend, Statement};
        let backend = self.db.get_database_backend();
        // `$argon2id$v=19$m=19456,t=2,p=1$salt$hash`: the prefix ends before the fourth `$`
        // after the first. i2, i3, i4 are the positions of the next `$` in each remainder.
        let position = match backend {
            DbBackend::Postgres => "strpos",
            _ => "instr",
        };
        let sql = format!(
            "WITH a AS (SELECT password_hash AS h, {position}(substr(password_hash, 2), '$') AS i2 FROM users), \
             b AS (SELECT h, i2, {position}(substr(h, i2 + 2), '$') AS i3 FROM a), \
             c AS (SELECT h, i2, i3, {position}(substr(h, i2 + i3 + 2), '$') AS i4 FROM b) \
             SELECT DISTINCT substr(h, 1, i2 + i3 + i4) AS prefix FROM c \
             WHERE i2 > 0 AND i3 > 0 AND i4 > 0"
        );
        let rows = self
            .db
            .query_all_raw(Statement::from_string(backend, sql))
            .await?;
        rows.iter()
            .map(|row| row.try_get::<String>("", "prefix").map_err(Into::into))
            .collect()
    }

    /// Adds a user and returns its id; [`StoreError::EmailTaken`] if the email exists.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn insert_user(&self, email: &str, password_hash: &str) -> Result<Uuid, StoreError> {
        let _turn = self.write_turn().await?;
        let now = now();
        let id = Uuid::new_v4();
        let active = user::ActiveModel {
            id: Set(id),
            email: Set(email.to_owned()),
            password_hash: Set(password_hash.to_owned()),
            disabled_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        };
        match user::Entity::insert(active)
            .exec_without_returning(&self.db)
            .await
        {
            Ok(_) => Ok(id),
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                Err(StoreError::EmailTaken)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reserves a login attempt for `email` before its password is checked: counted as a
    /// failure at once (failures before `forget_before` forgotten), so that concurrent
    /// guesses on any replica each take a count, and blocking the next attempt until
    /// `block_end(count, now)`. Refused, and not counted, while an earlier block lasts.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn reserve_login_attempt(
        &self,
        email: &str,
        now: DateTime<Utc>,
        forget_before: DateTime<Utc>,
        block_end: impl Fn(u32, DateTime<Utc>) -> DateTime<Utc>,
    ) -> Result<LoginReservation, StoreError> {
        let _turn = self.write_turn().await?;
        use sea_orm::sea_query::{Expr, ExprTrait as _, OnConflict};
        let txn = self.db.begin().await?;
        // One atomic increment, which on PostgreSQL also locks the row until the commit:
        // concurrent reservations of one account take their counts one after another.
        let count = Expr::case(
            Expr::col((login_attempt::Entity, login_attempt::Column::LastFailureAt))
                .lt(forget_before),
            1,
        )
        .finally(Expr::col((login_attempt::Entity, login_attempt::Column::Failures)).add(1));
        login_attempt::Entity::insert(login_attempt::ActiveModel {
            email: Set(email.to_owned()),
            failures: Set(1),
            last_failure_at: Set(now),
            blocked_until: Set(now),
        })
        .on_conflict(
            OnConflict::column(login_attempt::Column::Email)
                .value(login_attempt::Column::Failures, count)
                .value(login_attempt::Column::LastFailureAt, now)
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        let Some(row) = login_attempt::Entity::find_by_id(email.to_owned())
            .one(&txn)
            .await?
        else {
            return Err(missing("login attempt just written"));
        };
        if row.blocked_until > now {
            txn.rollback().await?;
            return Ok(LoginReservation::Blocked {
                until: row.blocked_until,
            });
        }
        let failures = u32::try_from(row.failures).unwrap_or(u32::MAX);
        login_attempt::Entity::update_many()
            .col_expr(
                login_attempt::Column::BlockedUntil,
                block_end(failures, now).into(),
            )
            .filter(login_attempt::Column::Email.eq(email))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(LoginReservation::Granted { failures })
    }

    /// Gives back a reservation whose password was never checked (the hashing queue was full,
    /// the database failed): one count less, and the block of one failure less.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn release_login_attempt(
        &self,
        email: &str,
        now: DateTime<Utc>,
        block_end: impl Fn(u32, DateTime<Utc>) -> DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await?;
        let txn = self.db.begin().await?;
        let Some(row) = login_attempt::Entity::find_by_id(email.to_owned())
            .one(&txn)
            .await?
        else {
            return Ok(());
        };
        let failures = row.failures.saturating_sub(1).max(0);
        login_attempt::Entity::update_many()
            .col_expr(login_attempt::Column::Failures, failures.into())
            .col_expr(
                login_attempt::Column::BlockedUntil,
                block_end(u32::try_from(failures).unwrap_or(0), now).into(),
            )
            .filter(login_attempt::Column::Email.eq(email))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Records that a login of `email` succeeded from `client` at `now`.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn remember_login_client(
        &self,
        email: &str,
        client: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        use sea_orm::sea_query::OnConflict;
        let _turn = self.write_turn().await?;
        known_login_client::Entity::insert(known_login_client::ActiveModel {
            email: Set(email.to_owned()),
            client: Set(client.to_owned()),
            last_success_at: Set(now),
        })
        .on_conflict(
            OnConflict::columns([
                known_login_client::Column::Email,
                known_login_client::Column::Client,
            ])
            .update_column(known_login_client::Column::LastSuccessAt)
            .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// Whether a login of `email` succeeded from `client` since `since`.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn is_known_login_client(
        &self,
        email: &str,
        client: &str,
        since: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(
            known_login_client::Entity::find_by_id((email.to_owned(), client.to_owned()))
                .one(&self.db)
                .await?
                .is_some_and(|known| known.last_success_at >= since),
        )
    }

    /// Forgets that `client` ever logged in as `email` (after it failed to, while trusted).
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn forget_login_client(&self, email: &str, client: &str) -> Result<(), StoreError> {
        let _turn = self.write_turn().await?;
        known_login_client::Entity::delete_by_id((email.to_owned(), client.to_owned()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Forgets the failed logins of `email` (after a success).
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn clear_login_failures(&self, email: &str) -> Result<(), StoreError> {
        let _turn = self.write_turn().await?;
        login_attempt::Entity::delete_by_id(email.to_owned())
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Replaces a user's password hash, only if it is still `old_hash`; false otherwise. The
    /// same password under new parameters: `updated_at` stays, so logins racing this one,
    /// which verified the old hash, still open their sessions ([`Store::create_session`]).
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system(), user_id = %user_id))]
    pub async fn replace_password_hash(
        &self,
        user_id: Uuid,
        old_hash: &str,
        new_hash: &str,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await?;
        let updated = user::Entity::update_many()
            .col_expr(user::Column::PasswordHash, new_hash.into())
            .filter(user::Column::Id.eq(user_id))
            .filter(user::Column::PasswordHash.eq(old_hash))
            .exec(&self.db)
            .await?
            .rows_affected;
        Ok(updated == 1)
    }

    /// Sets a user's password hash and revokes all their sessions, in one transaction; `None` if
    /// no user has that email.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn set_password(
        &self,
        email: &str,
        password_hash: &str,
    ) -> Result<Option<Uuid>, StoreError> {
        let _turn = self.write_turn().await?;
        let now = now();
        let txn = self.db.begin().await?;
        let updated = user::Entity::update_many()
            .col_expr(user::Column::PasswordHash, password_hash.into())
            .col_expr(user::Column::UpdatedAt, now.into())
            .filter(user::Column::Email.eq(email))
            .exec(&txn)
            .await?
            .rows_affected;
        let user = user::Entity::find()
            .filter(user::Column::Email.eq(email))
            .one(&txn)
            .await?;
        let Some(user) = user.filter(|_| updated == 1) else {
            txn.rollback().await?;
            return Ok(None);
        };
        let reason = RevokedReason::PasswordChanged;
        revoke_sessions_where(&txn, session::Column::UserId.eq(user.id), reason, now).await?;
        txn.commit().await?;
        Ok(Some(user.id))
    }

    /// Marks a user disabled and revokes all their sessions, in one transaction; `None` if no
    /// user has that email.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn disable_user(&self, email: &str) -> Result<Option<Uuid>, StoreError> {
        let _turn = self.write_turn().await?;
        let Some(user) = self.user_by_email(email).await? else {
            return Ok(None);
        };
        let now = now();
        let txn = self.db.begin().await?;
        user::Entity::update_many()
            .col_expr(user::Column::DisabledAt, now.into())
            .col_expr(user::Column::UpdatedAt, now.into())
            .filter(user::Column::Id.eq(user.id))
            .filter(user::Column::DisabledAt.is_null())
            .exec(&txn)
            .await?;
        revoke_sessions_where(
            &txn,
            session::Column::UserId.eq(user.id),
            RevokedReason::UserDisabled,
            now,
        )
        .await?;
        txn.commit().await?;
        Ok(Some(user.id))
    }
}
