//! Revocations pushed between replicas on PostgreSQL: every revocation is announced with
//! NOTIFY in the statement or transaction that makes it (delivered when it commits), and each
//! replica LISTENs on a connection of its own. The poll stays as the backstop: a notification
//! sent while a listener was reconnecting is lost. SQLite has no such channel and polls.

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DbBackend, DbErr, Statement,
    sqlx::postgres::{PgListener, PgPoolOptions},
};
use uuid::Uuid;

use super::{Store, StoreError};

/// The NOTIFY channel.
const CHANNEL: &str = "authd_revocations";

/// Sessions per notification: a payload must stay under PostgreSQL's 8,000 bytes.
const SESSIONS_PER_NOTIFICATION: usize = 200;

/// The listener connection's `application_name`, so operators (and tests) can find it.
pub const LISTENER_APPLICATION_NAME: &str = "authd-revocation-listener";

/// A new replica's name among the replicas, for [`announce`]: its own announcements come
/// back to its listener too, and are skipped there (it applied them when it made them). One
/// per store, not per process, so replicas sharing a process (tests, benchmarks) hear each
/// other.
pub(super) fn new_origin() -> std::sync::Arc<str> {
    Uuid::new_v4().simple().to_string().into()
}

/// Announces, as `origin`, that `sessions` were revoked at `at`, within the caller's statement
/// or transaction. Nothing on SQLite.
pub(super) async fn announce(
    db: &impl ConnectionTrait,
    origin: &str,
    sessions: &[Uuid],
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres || sessions.is_empty() {
        return Ok(());
    }
    for chunk in sessions.chunks(SESSIONS_PER_NOTIFICATION) {
        let mut payload = format!("{origin} {}", at.timestamp_micros());
        for session in chunk {
            payload.push(' ');
            payload.push_str(session.simple().encode_lower(&mut Uuid::encode_buffer()));
        }
        let notify = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [CHANNEL.into(), payload.into()],
        );
        db.execute_raw(notify).await?;
    }
    crate::metrics::revocations_pushed(sessions.len());
    Ok(())
}

/// Revocations announced by any replica: `(when, sessions)` batches.
#[derive(Debug)]
pub struct RevocationListener {
    listener: PgListener,
    /// This replica's origin: its own announcements are skipped.
    origin: std::sync::Arc<str>,
}

/// What the listener heard next.
#[derive(Debug)]
pub enum Heard {
    /// Sessions revoked at the time given.
    Revoked(DateTime<Utc>, Vec<Uuid>),
    /// The connection was lost; the next call reconnects. Announcements in between are lost.
    Reconnecting,
}

impl Store {
    /// A listener on a connection of its own (not one of the pool's), or `None` on SQLite.
    pub async fn revocation_listener(&self) -> Result<Option<RevocationListener>, StoreError> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return Ok(None);
        }
        let options = self
            .db
            .get_postgres_connection_pool()
            .connect_options()
            .as_ref()
            .clone()
            .application_name(LISTENER_APPLICATION_NAME);
        // One connection, kept for as long as it lives; it reconnects through this pool.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options);
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(connection_error)?;
        listener.listen(CHANNEL).await.map_err(connection_error)?;
        Ok(Some(RevocationListener {
            listener,
            origin: std::sync::Arc::clone(&self.origin),
        }))
    }
}

impl RevocationListener {
    /// The next announcement. A payload that does not parse is skipped (and logged): the
    /// poll still brings what it named.
    pub async fn next(&mut self) -> Result<Heard, StoreError> {
        loop {
            let Some(notification) = self.listener.try_recv().await.map_err(connection_error)?
            else {
                return Ok(Heard::Reconnecting);
            };
            match parse(notification.payload()) {
                Some((origin, _, _)) if origin == &*self.origin => {}
                Some((_, at, sessions)) => return Ok(Heard::Revoked(at, sessions)),
                None => tracing::warn!("an unreadable revocation announcement was skipped"),
            }
        }
    }
}

/// A listener's failure, classified like the pool's (a lost connection is transient).
fn connection_error(error: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Conn(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(error)))
}

/// `origin at session...`.
fn parse(payload: &str) -> Option<(&str, DateTime<Utc>, Vec<Uuid>)> {
    let mut parts = payload.split(' ');
    let origin = parts.next()?;
    let at = DateTime::<Utc>::from_timestamp_micros(parts.next()?.parse().ok()?)?;
    let sessions = parts
        .map(|id| Uuid::try_parse(id).ok())
        .collect::<Option<Vec<_>>>()?;
    Some((origin, at, sessions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_names_its_time_and_sessions_and_garbage_is_refused() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let payload = format!("replica 1764000000123456 {} {}", a.simple(), b.simple());
        let (origin, at, sessions) = parse(&payload).unwrap();
        assert_eq!(origin, "replica");
        assert_eq!(at.timestamp_micros(), 1_764_000_000_123_456);
        assert_eq!(sessions, [a, b]);
        for bad in ["", "replica soon", "replica 1 not-a-uuid", "replica"] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
        // The largest payload stays under PostgreSQL's limit.
        let largest = 33 + 20 + SESSIONS_PER_NOTIFICATION * 33;
        assert!(largest < 8000);
    }
}
