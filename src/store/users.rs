//! Users: the queries of login, the CLI and user administration.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, ExprTrait as _, QueryFilter, SqlErr,
    TransactionTrait,
};
use uuid::Uuid;

use super::{
    Store, StoreError,
    entity::{session, user},
    now,
    sessions::RevokedReason,
};

/// How a caller names a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKey<'a> {
    /// By id.
    Id(Uuid),
    /// By normalised email.
    Email(&'a str),
}

impl UserKey<'_> {
    fn condition(self) -> sea_orm::sea_query::SimpleExpr {
        match self {
            Self::Id(id) => user::Column::Id.eq(id),
            Self::Email(email) => user::Column::Email.eq(email),
        }
    }
}

/// Which of a user's sessions a password change ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndSessions {
    /// Every one.
    All,
    /// Every one but this (the session that asked).
    AllBut(Uuid),
    /// None.
    None,
}

/// A user, as an administrator sees it: never the password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The user's id.
    pub id: Uuid,
    /// The normalised email.
    pub email: String,
    /// When the user was added.
    pub created_at: DateTime<Utc>,
    /// When the user was disabled, if they are.
    pub disabled_at: Option<DateTime<Utc>>,
}

impl From<user::Model> for UserRecord {
    fn from(user: user::Model) -> Self {
        Self {
            id: user.id,
            email: user.email,
            created_at: user.created_at,
            disabled_at: user.disabled_at,
        }
    }
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
    /// The user `key` names, with what a login checks.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn login_user(&self, key: UserKey<'_>) -> Result<Option<LoginUser>, StoreError> {
        Ok(user::Entity::find()
            .filter(key.condition())
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

    /// The user `key` names.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn user(&self, key: UserKey<'_>) -> Result<Option<UserRecord>, StoreError> {
        Ok(user::Entity::find()
            .filter(key.condition())
            .one(&self.db)
            .await?
            .map(UserRecord::from))
    }

    /// Sets a user's password hash and revokes the sessions `end` names, in one transaction;
    /// the user and the sessions revoked, or `None` if `key` names no user.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn set_password(
        &self,
        key: UserKey<'_>,
        password_hash: &str,
        end: EndSessions,
    ) -> Result<Option<(Uuid, Vec<Uuid>)>, StoreError> {
        let _turn = self.write_turn().await?;
        let now = now();
        let txn = self.db.begin().await?;
        let updated = user::Entity::update_many()
            .col_expr(user::Column::PasswordHash, password_hash.into())
            .col_expr(user::Column::UpdatedAt, now.into())
            .filter(key.condition())
            .exec(&txn)
            .await?
            .rows_affected;
        let user = user::Entity::find()
            .filter(key.condition())
            .one(&txn)
            .await?;
        let Some(user) = user.filter(|_| updated == 1) else {
            txn.rollback().await?;
            return Ok(None);
        };
        let owned = session::Column::UserId.eq(user.id);
        let condition = match end {
            EndSessions::All => Some(owned),
            EndSessions::AllBut(kept) => Some(owned.and(session::Column::Id.ne(kept))),
            EndSessions::None => None,
        };
        let revoked = match condition {
            Some(condition) => {
                self.revoke_where(&txn, condition, RevokedReason::PasswordChanged, now)
                    .await?
            }
            None => Vec::new(),
        };
        txn.commit().await?;
        Ok(Some((user.id, revoked.into_iter().map(|s| s.id).collect())))
    }

    /// Marks a user disabled (if not already) and revokes all their sessions, in one
    /// transaction; the user and the sessions revoked, or `None` if `key` names no user.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn disable_user(
        &self,
        key: UserKey<'_>,
    ) -> Result<Option<(UserRecord, Vec<Uuid>)>, StoreError> {
        let _turn = self.write_turn().await?;
        let now = now();
        let txn = self.db.begin().await?;
        user::Entity::update_many()
            .col_expr(user::Column::DisabledAt, now.into())
            .col_expr(user::Column::UpdatedAt, now.into())
            .filter(key.condition())
            .filter(user::Column::DisabledAt.is_null())
            .exec(&txn)
            .await?;
        let Some(user) = user::Entity::find()
            .filter(key.condition())
            .one(&txn)
            .await?
        else {
            txn.rollback().await?;
            return Ok(None);
        };
        let revoked = self
            .revoke_where(
                &txn,
                session::Column::UserId.eq(user.id),
                RevokedReason::UserDisabled,
                now,
            )
            .await?;
        txn.commit().await?;
        Ok(Some((
            UserRecord::from(user),
            revoked.into_iter().map(|s| s.id).collect(),
        )))
    }

    /// Lets a disabled user log in again; the user, or `None` if `key` names no user.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn enable_user(&self, key: UserKey<'_>) -> Result<Option<UserRecord>, StoreError> {
        let _turn = self.write_turn().await?;
        user::Entity::update_many()
            .col_expr(
                user::Column::DisabledAt,
                Option::<DateTime<Utc>>::None.into(),
            )
            .col_expr(user::Column::UpdatedAt, now().into())
            .filter(key.condition())
            .filter(user::Column::DisabledAt.is_not_null())
            .exec(&self.db)
            .await?;
        Ok(user::Entity::find()
            .filter(key.condition())
            .one(&self.db)
            .await?
            .map(UserRecord::from))
    }
}
