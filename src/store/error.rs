//! Storage failures, classified once: transient ones (the database is away or busy) apart
//! from the rest, so the domain can answer UNAVAILABLE or INTERNAL.

use sea_orm::{DbErr, RuntimeErr};

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
