//! Storage: the SeaORM entities and the few queries the domain needs, nothing more.
//! The store knows nothing of gRPC; it takes and returns plain values and entity models.

pub mod entity;
mod sqlite_writer;

use std::{path::PathBuf, str::FromStr, sync::Arc};

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QuerySelect, QueryTrait, RuntimeErr, SqlErr, TransactionTrait,
    sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};
use uuid::Uuid;

use crate::config::Config;
use entity::{login_attempt, refresh_token, session, user};

/// A storage failure, classified once so the domain can answer UNAVAILABLE or INTERNAL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached, or was too busy (pool exhausted, SQLite locked,
    /// PostgreSQL connection lost): worth retrying.
    #[error("database unavailable")]
    Unavailable(#[source] DbErr),
    /// A user with that email already exists.
    #[error("email already registered")]
    EmailTaken,
    /// Anything else: a bug or a broken schema.
    #[error("database error")]
    Database(#[source] DbErr),
}

impl From<DbErr> for StoreError {
    fn from(err: DbErr) -> Self {
        if is_transient(&err) {
            Self::Unavailable(err)
        } else {
            Self::Database(err)
        }
    }
}

/// Whether an error means "try again later" rather than "this is broken".
fn is_transient(err: &DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    let runtime = match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(runtime) | DbErr::Query(runtime) => runtime,
        _ => return false,
    };
    let RuntimeErr::SqlxError(sqlx) = runtime else {
        return false;
    };
    match sqlx.as_ref() {
        Sqlx::Io(_)
        | Sqlx::Tls(_)
        | Sqlx::Protocol(_)
        | Sqlx::PoolTimedOut
        | Sqlx::PoolClosed
        | Sqlx::WorkerCrashed => true,
        Sqlx::Database(db) => {
            let code = db.code().unwrap_or_default();
            // SQLite: primary codes BUSY (5) and LOCKED (6), also as extended codes
            // (code + 256 * n). PostgreSQL: connection exceptions (08), insufficient resources
            // (53), operator intervention such as a shutdown (57), serialisation and deadlock
            // failures (40001, 40P01), lock_timeout expired (55P03).
            match code.parse::<u32>() {
                Ok(n)
                    if db
                        .try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
                        .is_some() =>
                {
                    matches!(n & 0xff, 5 | 6)
                }
                _ => {
                    code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57")
                        || code == "40001"
                        || code == "40P01"
                        || code == "55P03"
                }
            }
        }
        _ => false,
    }
}

/// The current time at the precision every backend keeps (microseconds), so a value
/// written and read back compares equal.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A session to create at login, with its first refresh token.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The session's id, also the `sid` claim.
    pub session_id: Uuid,
    /// Whose session it is.
    pub user_id: Uuid,
    /// When the login happened.
    pub created_at: DateTime<Utc>,
    /// The session's end.
    pub expires_at: DateTime<Utc>,
    /// SHA-256 of the first refresh token.
    pub token_hash: [u8; 32],
    /// When the first refresh token expires.
    pub token_expires_at: DateTime<Utc>,
}

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

/// What a rotation attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// This call won: the token is now used and its successor stored.
    Rotated {
        /// When the successor expires.
        expires_at: DateTime<Utc>,
        /// The session, unchanged by rotation.
        session_id: Uuid,
        /// The session's user.
        user_id: Uuid,
        /// The user's current email, for the new access token.
        email: String,
    },
    /// The token was current but its session is revoked; nothing was changed.
    SessionRevoked,
    /// The token was current but its session has ended; nothing was changed.
    SessionExpired,
    /// No current token has that hash: unknown, used, or expired. Nothing was changed.
    NotCurrent,
}

/// How long refresh tokens and sessions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// A refresh token's lifetime.
    pub refresh_token: TimeDelta,
    /// A session's absolute lifetime from its login, however often it refreshes.
    pub session_max: TimeDelta,
}

impl Lifetimes {
    /// When a token issued at `now` in a session that began at `session_start` expires: its own
    /// lifetime, cut short by the session's end.
    pub fn token_expiry(&self, now: DateTime<Utc>, session_start: DateTime<Utc>) -> DateTime<Utc> {
        let own = now
            .checked_add_signed(self.refresh_token)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let session_end = self.session_end(session_start);
        own.min(session_end)
    }

    /// The absolute end of a session that began at `session_start`.
    pub fn session_end(&self, session_start: DateTime<Utc>) -> DateTime<Utc> {
        session_start
            .checked_add_signed(self.session_max)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// A refresh token row with the session it belongs to.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// The token row.
    pub token: refresh_token::Model,
    /// Its session.
    pub session: session::Model,
}

/// A snapshot of the connection pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// Connections lent out to queries.
    pub in_use: u32,
    /// Open connections waiting for a query.
    pub idle: u32,
    /// `AUTH_DB_MAX_CONNECTIONS`.
    pub max: u32,
}

impl PoolUsage {
    fn of<Db: sea_orm::sqlx::Database>(pool: &sea_orm::sqlx::Pool<Db>) -> Self {
        let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
        Self {
            in_use: pool.size().saturating_sub(idle),
            idle,
            max: pool.options().get_max_connections(),
        }
    }
}

/// How long a pooled connection may sit idle before it is pinged when next lent out.
const IDLE_CONNECTION_CHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// The database connection pool and the queries authd runs.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// SQLite admits one writer at a time. On SQLite, writers take turns here, in arrival
    /// order, instead of in SQLite's busy handler, which sleeps and retries: measured, 2.3x
    /// the refresh throughput and a fraction of the tail (BENCHMARKS.md). `None` on
    /// PostgreSQL, whose row locks let writers run side by side.
    write_turn: Option<WriteTurn>,
    /// On an SQLite file, rotations run on a writer thread of their own, in batches.
    rotations: Option<sqlite_writer::RotationWriter>,
}

/// The queue of SQLite writers in this process, with how long one waits before giving up.
#[derive(Debug, Clone)]
struct WriteTurn {
    lock: Arc<tokio::sync::Mutex<()>>,
    timeout: std::time::Duration,
}

impl Store {
    /// Connects (creating the SQLite file and its folder if needed); does not migrate.
    pub async fn connect(config: &Config) -> Result<Self, StoreError> {
        let sqlite_folder = sqlite_file(&config.database_url)
            .and_then(|path| path.parent().map(PathBuf::from))
            .filter(|folder| !folder.as_os_str().is_empty());
        if let Some(folder) = sqlite_folder {
            std::fs::create_dir_all(&folder)
                .map_err(|e| unavailable(format!("cannot create {}: {e}", folder.display())))?;
        }
        let mut options = ConnectOptions::new(config.database_url.clone());
        let lock_timeout = config.db_lock_timeout;
        let lock_timeout_ms = lock_timeout.as_millis().to_string();
        options
            .max_connections(config.db_max_connections)
            .min_connections(0)
            .acquire_timeout(config.db_acquire_timeout)
            .connect_timeout(config.db_acquire_timeout)
            // sqlx pings every connection it lends by default: a round trip before each
            // statement or transaction. Only a connection idle this long, which a server,
            // proxy or firewall may have dropped, is checked first; one that breaks in use
            // fails its call (UNAVAILABLE) and is discarded when returned.
            .test_before_acquire_if_idle_for(IDLE_CONNECTION_CHECK)
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(move |opts| {
                opts.journal_mode(SqliteJournalMode::Wal)
                    // FULL: a committed rotation survives power loss too, not only a crash.
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(lock_timeout)
                    .foreign_keys(true)
            })
            .map_sqlx_postgres_opts(move |opts| {
                opts.options([("lock_timeout", lock_timeout_ms.as_str())])
            });
        let db = Database::connect(options).await?;
        let (write_turn, rotations) = match sqlite_file(&config.database_url) {
            Some(path) => {
                let turn = WriteTurn {
                    lock: Arc::default(),
                    timeout: lock_timeout,
                };
                let rotations = sqlite_writer::RotationWriter::start(&path, turn.clone())?;
                (Some(turn), Some(rotations))
            }
            None => (None, None),
        };
        Ok(Self {
            db,
            write_turn,
            rotations,
        })
    }

    /// Waits for this process's turn to write (SQLite only), as long as a statement would wait
    /// for SQLite's lock: past `AUTH_DB_LOCK_TIMEOUT` the call answers UNAVAILABLE.
    async fn write_turn(&self) -> Result<Option<tokio::sync::MutexGuard<'_, ()>>, StoreError> {
        let Some(turn) = &self.write_turn else {
            return Ok(None);
        };
        match tokio::time::timeout(turn.timeout, turn.lock.lock()).await {
            Ok(guard) => Ok(Some(guard)),
            Err(_) => Err(unavailable(
                "timed out waiting for the SQLite write lock".into(),
            )),
        }
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        Migrator::up(&self.db, None).await?;
        Ok(())
    }

    /// Checks that the database answers (a pooled connection and a round trip).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await?;
        Ok(())
    }

    /// The pool's connections in use, idle, and its maximum, for the metrics.
    pub fn pool_usage(&self) -> Option<PoolUsage> {
        use sea_orm::DatabaseConnectionType as Pool;
        match &self.db.inner {
            Pool::SqlxSqlitePoolConnection(_) => {
                Some(PoolUsage::of(self.db.get_sqlite_connection_pool()))
            }
            Pool::SqlxPostgresPoolConnection(_) => {
                Some(PoolUsage::of(self.db.get_postgres_connection_pool()))
            }
            _ => None,
        }
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(self) -> Result<(), StoreError> {
        self.db.close().await?;
        Ok(())
    }

    /// The user with this (normalised) email.
    #[tracing::instrument(skip(self), level = "debug")]
    pub async fn user_by_email(&self, email: &str) -> Result<Option<user::Model>, StoreError> {
        Ok(user::Entity::find()
            .filter(user::Column::Email.eq(email))
            .one(&self.db)
            .await?)
    }

    /// Adds a user; [`StoreError::EmailTaken`] if the email exists.
    #[tracing::instrument(skip(self, password_hash), level = "debug")]
    pub async fn insert_user(
        &self,
        email: &str,
        password_hash: &str,
    ) -> Result<user::Model, StoreError> {
        let _turn = self.write_turn().await?;
        let now = now();
        let model = user::Model {
            id: Uuid::new_v4(),
            email: email.to_owned(),
            password_hash: password_hash.to_owned(),
            disabled_at: None,
            created_at: now,
            updated_at: now,
        };
        let active = user::ActiveModel {
            id: Set(model.id),
            email: Set(model.email.clone()),
            password_hash: Set(model.password_hash.clone()),
            disabled_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        };
        match user::Entity::insert(active)
            .exec_without_returning(&self.db)
            .await
        {
            Ok(_) => Ok(model),
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                Err(StoreError::EmailTaken)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Until when logins for `email` are blocked, if a failure was ever recorded for it.
    #[tracing::instrument(skip(self), level = "debug")]
    pub async fn login_blocked_until(
        &self,
        email: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(login_attempt::Entity::find_by_id(email.to_owned())
            .one(&self.db)
            .await?
            .map(|row| row.blocked_until))
    }

    /// Counts a failed login for `email` (forgetting failures before `forget_before`) and
    /// blocks it for `delay(failures)`; returns the new count.
    #[tracing::instrument(skip(self, delay), level = "debug")]
    pub async fn record_login_failure(
        &self,
        email: &str,
        now: DateTime<Utc>,
        forget_before: DateTime<Utc>,
        delay: impl Fn(u32) -> TimeDelta,
    ) -> Result<u32, StoreError> {
        let _turn = self.write_turn().await?;
        use sea_orm::sea_query::{Expr, ExprTrait as _, OnConflict};
        let txn = self.db.begin().await?;
        // One atomic increment, whatever other replicas do at the same moment.
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
        let failures = u32::try_from(row.failures).unwrap_or(0);
        let blocked_until = now
            .checked_add_signed(delay(failures))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        login_attempt::Entity::update_many()
            .col_expr(login_attempt::Column::BlockedUntil, blocked_until.into())
            .filter(login_attempt::Column::Email.eq(email))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(failures)
    }

    /// Forgets the failed logins of `email` (after a success).
    #[tracing::instrument(skip(self), level = "debug")]
    pub async fn clear_login_failures(&self, email: &str) -> Result<(), StoreError> {
        let _turn = self.write_turn().await?;
        login_attempt::Entity::delete_by_id(email.to_owned())
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Replaces a user's password hash, only if it is still `old_hash`; false otherwise.
    #[tracing::instrument(skip(self, old_hash, new_hash), level = "debug")]
    pub async fn replace_password_hash(
        &self,
        user_id: Uuid,
        old_hash: &str,
        new_hash: &str,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await?;
        let updated = user::Entity::update_many()
            .col_expr(user::Column::PasswordHash, new_hash.into())
            .col_expr(user::Column::UpdatedAt, now().into())
            .filter(user::Column::Id.eq(user_id))
            .filter(user::Column::PasswordHash.eq(old_hash))
            .exec(&self.db)
            .await?
            .rows_affected;
        Ok(updated == 1)
    }

    /// Sets a user's password hash and revokes all their sessions, in one transaction; `None` if
    /// no user has that email.
    #[tracing::instrument(skip(self, password_hash), level = "debug")]
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
    #[tracing::instrument(skip(self), level = "debug")]
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

    /// Creates a session and its first refresh token, both or neither.
    #[tracing::instrument(skip_all, fields(session_id = %new.session_id), level = "debug")]
    pub async fn create_session(&self, new: &NewSession) -> Result<(), StoreError> {
        let _turn = self.write_turn().await?;
        let txn = self.db.begin().await?;
        session::Entity::insert(session::ActiveModel {
            id: Set(new.session_id),
            user_id: Set(new.user_id),
            created_at: Set(new.created_at),
            expires_at: Set(new.expires_at),
            last_refreshed_at: Set(new.created_at),
            revoked_at: Set(None),
            revoked_reason: Set(None),
        })
        .exec_without_returning(&txn)
        .await?;
        insert_refresh_token(
            &txn,
            new.session_id,
            None,
            &new.token_hash,
            new.created_at,
            new.token_expires_at,
        )
        .await?;
        txn.commit().await?;
        Ok(())
    }
}

impl Store {
    /// Trades the current token `old_hash` for a successor `new_hash`, in one transaction of
    /// four statements: claim, read the session with its user, extend, insert. On an SQLite
    /// file the rotation writer runs the same statements, batched (`sqlite_writer`).
    ///
    /// The conditional update of the token row picks one winner among concurrent callers on
    /// any backend and across replicas; the winner then updates its session row only while the
    /// session is alive, which serialises it against a concurrent logout of that session.
    #[tracing::instrument(skip_all, level = "debug")]
    pub async fn rotate_refresh_token(
        &self,
        old_hash: &[u8; 32],
        new_hash: &[u8; 32],
        now: DateTime<Utc>,
        lifetimes: Lifetimes,
    ) -> Result<Rotation, StoreError> {
        if let Some(writer) = &self.rotations {
            return writer.rotate(old_hash, new_hash, now, lifetimes).await;
        }
        let _turn = self.write_turn().await?;
        let txn = self.db.begin().await?;
        // A write first, so SQLite takes its write lock (waiting up to the busy timeout) before
        // reading anything: no stale snapshot can fail the upgrade later.
        let claimed = refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::UsedAt, now.into())
            .filter(refresh_token::Column::TokenHash.eq(old_hash.to_vec()))
            .filter(refresh_token::Column::UsedAt.is_null())
            .filter(refresh_token::Column::ExpiresAt.gt(now))
            .exec_with_returning(&txn)
            .await?;
        let Some(token) = claimed.into_iter().next() else {
            txn.rollback().await?;
            return Ok(Rotation::NotCurrent);
        };
        let Some((session, user)) = session::Entity::find_by_id(token.session_id)
            .find_also_related(user::Entity)
            .one(&txn)
            .await?
        else {
            return Err(missing("session of a refresh token"));
        };
        let expires_at = lifetimes.token_expiry(now, session.created_at);
        // Conditional on the session being alive: a logout that committed first wins, and one
        // that comes later waits for this row and then revokes the session, successor included.
        let alive = session::Entity::update_many()
            .col_expr(session::Column::LastRefreshedAt, now.into())
            .col_expr(session::Column::ExpiresAt, expires_at.into())
            .filter(session::Column::Id.eq(session.id))
            .filter(session::Column::RevokedAt.is_null())
            .filter(session::Column::ExpiresAt.gt(now))
            .exec(&txn)
            .await?
            .rows_affected;
        if alive == 0 || expires_at <= now {
            txn.rollback().await?;
            let revoked = session::Entity::find_by_id(session.id)
                .one(&self.db)
                .await?
                .is_none_or(|s| s.revoked_at.is_some());
            return Ok(if revoked {
                Rotation::SessionRevoked
            } else {
                Rotation::SessionExpired
            });
        }
        let Some(user) = user else {
            return Err(missing("session user"));
        };
        insert_refresh_token(&txn, session.id, Some(token.id), new_hash, now, expires_at).await?;
        txn.commit().await?;
        Ok(Rotation::Rotated {
            session_id: session.id,
            user_id: user.id,
            email: user.email,
            expires_at,
        })
    }

    /// The token that replaced `token_id`, if any.
    #[tracing::instrument(skip(self), level = "debug")]
    pub async fn successor_of(
        &self,
        token_id: Uuid,
    ) -> Result<Option<refresh_token::Model>, StoreError> {
        Ok(refresh_token::Entity::find()
            .filter(refresh_token::Column::ParentId.eq(token_id))
            .one(&self.db)
            .await?)
    }

    /// The user with this id.
    #[tracing::instrument(skip(self), level = "debug")]
    pub async fn user_by_id(&self, user_id: Uuid) -> Result<Option<user::Model>, StoreError> {
        Ok(user::Entity::find_by_id(user_id).one(&self.db).await?)
    }

    /// The token with this hash and its session, whatever their state.
    #[tracing::instrument(skip_all, level = "debug")]
    pub async fn token_record(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        let Some(token) = refresh_token::Entity::find()
            .filter(refresh_token::Column::TokenHash.eq(hash.to_vec()))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let session = session::Entity::find_by_id(token.session_id)
            .one(&self.db)
            .await?;
        Ok(session.map(|session| TokenRecord { token, session }))
    }

    /// Revokes one session; false if it was already revoked (or does not exist).
    #[tracing::instrument(skip(self), level = "debug")]
    pub async fn revoke_session(
        &self,
        session_id: Uuid,
        reason: RevokedReason,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await?;
        let revoked =
            revoke_sessions_where(&self.db, session::Column::Id.eq(session_id), reason, now)
                .await?;
        Ok(revoked > 0)
    }

    /// Revokes every session of a user and returns the ids of all their revoked sessions that
    /// have not ended, so callers can stop their access tokens at once.
    #[tracing::instrument(skip(self), level = "debug")]
    pub async fn revoke_user_sessions(
        &self,
        user_id: Uuid,
        reason: RevokedReason,
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let _turn = self.write_turn().await?;
        revoke_sessions_where(&self.db, session::Column::UserId.eq(user_id), reason, now).await?;
        Ok(session::Entity::find()
            .filter(session::Column::UserId.eq(user_id))
            .filter(session::Column::RevokedAt.is_not_null())
            .filter(session::Column::ExpiresAt.gt(now))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect())
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

    /// Deletes up to `limit` refresh tokens that expired before `now`, in one short statement.
    pub async fn delete_expired_refresh_tokens(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await?;
        let (id, expires_at) = (refresh_token::Column::Id, refresh_token::Column::ExpiresAt);
        Ok(delete_expired::<refresh_token::Entity>(&self.db, id, expires_at, now, limit).await?)
    }

    /// Deletes up to `limit` sessions that ended before `now` (their tokens, all expired by
    /// then, go with them).
    pub async fn delete_expired_sessions(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await?;
        let (id, expires_at) = (session::Column::Id, session::Column::ExpiresAt);
        Ok(delete_expired::<session::Entity>(&self.db, id, expires_at, now, limit).await?)
    }
}

/// `DELETE FROM table WHERE id IN (SELECT id ... WHERE expires_at <= now LIMIT limit)`: a
/// bounded batch that works the same on SQLite and PostgreSQL.
async fn delete_expired<E: EntityTrait>(
    db: &impl ConnectionTrait,
    id: E::Column,
    expires_at: E::Column,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<u64, DbErr> {
    let batch = E::find()
        .select_only()
        .column(id)
        .filter(expires_at.lte(now))
        .limit(limit)
        .into_query();
    Ok(E::delete_many()
        .filter(id.in_subquery(batch))
        .exec(db)
        .await?
        .rows_affected)
}

/// Revokes the live sessions matching `condition`; returns how many. Every revocation goes
/// through here, so the metric counts them all (inside a transaction that later fails to
/// commit, it counts a revocation that did not happen: rare, and on the side of caution).
async fn revoke_sessions_where(
    db: &impl ConnectionTrait,
    condition: impl sea_orm::sea_query::IntoCondition,
    reason: RevokedReason,
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    let revoked = session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, now.into())
        .col_expr(session::Column::RevokedReason, reason.as_str().into())
        .filter(condition)
        .filter(session::Column::RevokedAt.is_null())
        .exec(db)
        .await?
        .rows_affected;
    crate::metrics::sessions_revoked(reason.as_str(), revoked);
    Ok(revoked)
}

/// A failure of authd's own making that is worth retrying, such as a lock waited on too long.
fn unavailable(message: String) -> StoreError {
    StoreError::Unavailable(DbErr::Conn(RuntimeErr::Internal(message)))
}

fn missing(what: &str) -> StoreError {
    StoreError::Database(DbErr::RecordNotFound(what.to_owned()))
}

async fn insert_refresh_token(
    db: &impl ConnectionTrait,
    session_id: Uuid,
    parent_id: Option<Uuid>,
    token_hash: &[u8; 32],
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<Uuid, DbErr> {
    let id = Uuid::new_v4();
    refresh_token::Entity::insert(refresh_token::ActiveModel {
        id: Set(id),
        session_id: Set(session_id),
        parent_id: Set(parent_id),
        token_hash: Set(token_hash.to_vec()),
        created_at: Set(created_at),
        expires_at: Set(expires_at),
        used_at: Set(None),
    })
    .exec_without_returning(db)
    .await?;
    Ok(id)
}

/// The database file of an SQLite URL; `None` for PostgreSQL and in-memory SQLite.
pub fn sqlite_file(database_url: &str) -> Option<PathBuf> {
    if !database_url.starts_with("sqlite:") {
        return None;
    }
    let options = SqliteConnectOptions::from_str(database_url).ok()?;
    let path = options.get_filename();
    let in_memory = path.as_os_str().is_empty() || path.to_string_lossy().contains(":memory:");
    (!in_memory).then(|| path.to_path_buf())
}
