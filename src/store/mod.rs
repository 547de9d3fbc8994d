//! Storage: the SeaORM entities and the few queries the domain needs, nothing more.
//! The store knows nothing of gRPC; it takes and returns plain values, and answers in the
//! domain's terms.

mod announce;
mod batcher;
mod cleanup;
pub mod entity;
mod error;
mod login_attempts;
mod refresh;
mod rotation;
mod sessions;
mod users;

pub use announce::{Heard, LISTENER_APPLICATION_NAME, RevocationListener};
pub use cleanup::SweptSessions;
pub use error::StoreError;
pub use login_attempts::LoginReservation;
pub use refresh::{LegacyToken, RefreshState, RotationOutcome};
pub use rotation::{Credential, MAX_BATCH, RefreshClock, Rotated, rotation_statement};
pub use sessions::{ClientSeen, FIRST_GENERATION, NewSession, RevokedReason, SessionRecord};
pub use users::{EndSessions, LoginUser, UserKey, UserRecord};

use std::{path::PathBuf, str::FromStr, sync::Arc};

use chrono::{DateTime, SubsecRound, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DbErr, RuntimeErr,
    sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};

use crate::config::DatabaseSettings;

/// The current time at the precision every backend keeps (microseconds), so a value
/// written and read back compares equal.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
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
    /// Rotations, batched: those waiting in line share one statement.
    rotations: batcher::RotationBatcher,
    /// This replica's name in its revocation announcements.
    origin: Arc<str>,
}

/// The queue of SQLite writers in this process, with how long one waits before giving up.
#[derive(Debug, Clone)]
struct WriteTurn {
    lock: Arc<tokio::sync::Mutex<()>>,
    timeout: std::time::Duration,
}

/// Creates the SQLite file (0600) and any missing folder above it (0700) before SQLite does,
/// whatever the umask: the file holds emails and password hashes, and SQLite gives its `-wal`
/// and `-shm` files the database file's mode.
fn create_private(file: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let failed = |path: &std::path::Path, e: std::io::Error| {
        unavailable(format!("cannot create {}: {e}", path.display()))
    };
    if let Some(folder) = file
        .parent()
        .filter(|folder| !folder.as_os_str().is_empty())
        && !folder.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(folder)
            .map_err(|e| failed(folder, e))?;
        // The mode above is masked by the umask; this is not.
        std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| failed(folder, e))?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
    {
        Ok(created) => created
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| failed(file, e)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(failed(file, e)),
    }
}

impl Store {
    /// The database's name in OpenTelemetry's `db.system.name`, for the statement spans.
    /// (Their `#[instrument]` names the target `authd::db`, [`crate::telemetry::DB_TARGET`],
    /// as a literal: the attribute takes no constant.)
    fn db_system(&self) -> &'static str {
        match self.db.get_database_backend() {
            sea_orm::DbBackend::Postgres => "postgresql",
            sea_orm::DbBackend::Sqlite => "sqlite",
            // Configuration accepts no other database (AUTH_DATABASE_URL).
            _ => "other_sql",
        }
    }

    /// Connects (creating the SQLite file and its folder if needed); does not migrate.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        if let Some(file) = sqlite_file(&settings.url) {
            create_private(&file)?;
        }
        let mut options = ConnectOptions::new(settings.url.clone());
        let lock_timeout = settings.lock_timeout;
        let lock_timeout_ms = lock_timeout.as_millis().to_string();
        options
            .max_connections(settings.max_connections)
            .min_connections(0)
            .acquire_timeout(settings.acquire_timeout)
            .connect_timeout(settings.acquire_timeout)
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
        let write_turn = sqlite_file(&settings.url).map(|_| WriteTurn {
            lock: Arc::default(),
            timeout: lock_timeout,
        });
        let rotations = batcher::RotationBatcher::start(db.clone(), write_turn.clone());
        Ok(Self {
            db,
            write_turn,
            rotations,
            origin: announce::new_origin(),
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

    /// Drops every idle pooled PostgreSQL connection, without a goodbye to a server that may
    /// be gone; returns how many. Called while the database probe fails: each idle connection
    /// from before an outage is dead, and would otherwise fail one call after the database is
    /// back, or one probe each, keeping health NOT_SERVING a probe interval per connection.
    pub fn discard_idle_connections(&self) -> usize {
        use sea_orm::DatabaseConnectionType as Pool;
        let Pool::SqlxPostgresPoolConnection(_) = &self.db.inner else {
            return 0;
        };
        let pool = self.db.get_postgres_connection_pool();
        let mut discarded = 0;
        for _ in 0..pool.num_idle() {
            let Some(connection) = pool.try_acquire() else {
                break;
            };
            drop(connection.detach());
            discarded += 1;
        }
        discarded
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
}

/// A failure of authd's own making that is worth retrying, such as a lock waited on too long.
fn unavailable(message: String) -> StoreError {
    StoreError::Unavailable(DbErr::Conn(RuntimeErr::Internal(message)))
}

fn missing(what: &str) -> StoreError {
    StoreError::Database(DbErr::RecordNotFound(what.to_owned()))
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
