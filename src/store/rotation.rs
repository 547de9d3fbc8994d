//! The two statements that hand out a session's next tokens, written once for every backend.
//!
//! Each is a single conditional `UPDATE ... RETURNING` of the session's one `refresh_tokens`
//! row. The row lock it takes decides the one winner among concurrent refreshes, in this
//! process and across replicas; its conditions are every rule a refresh must pass (the
//! presented generation and secret, the token's expiry, a live session, an enabled user).
//! The text uses `$N` placeholders, which PostgreSQL, sqlx's SQLite driver and the SQLite
//! writer (`sqlite_writer`) all bind by number.

use chrono::{DateTime, Utc};
use sea_orm::{QueryResult, Value};
use uuid::Uuid;

use super::StoreError;

/// The session is alive and its user enabled. `$3`: sessions that began at or before it have
/// reached their absolute end.
macro_rules! live_session_and_user {
    () => {
        " AND EXISTS (SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id \
           WHERE s.id = refresh_tokens.session_id AND s.revoked_at IS NULL \
           AND s.created_at > $3 AND u.disabled_at IS NULL)"
    };
}

/// What the access token and the response need (read by [`Rotated::read`]). Scalar
/// subqueries because SQLite's `RETURNING` cannot name another table of an `UPDATE ... FROM`.
macro_rules! returning_what_the_tokens_need {
    () => {
        " RETURNING \
           (SELECT s.user_id FROM sessions s WHERE s.id = refresh_tokens.session_id), \
           (SELECT u.email FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id = refresh_tokens.session_id), \
           (SELECT s.created_at FROM sessions s WHERE s.id = refresh_tokens.session_id), \
           expires_at"
    };
}

/// Replaces the presented current token with its successor (`$6` its secret's hash, `$7` its
/// expiry). `$1` session, `$2` now, `$4` generation, `$5` secret hash.
pub(super) const ROTATE: &str = concat!(
    "UPDATE refresh_tokens SET generation = generation + 1, secret_hash = $6, \
       rotated_at = $2, expires_at = $7, retried = FALSE \
     WHERE session_id = $1 AND generation = $4 AND secret_hash = $5 AND expires_at > $2",
    live_session_and_user!(),
    returning_what_the_tokens_need!()
);

/// Spends the one reuse-grace retry of the session's current token, if it was issued after
/// `$6`: the caller hands that same token out again. Parameters as in [`ROTATE`], naming the
/// current generation and secret.
pub(super) const RETRY: &str = concat!(
    "UPDATE refresh_tokens SET retried = TRUE \
     WHERE session_id = $1 AND generation = $4 AND secret_hash = $5 AND expires_at > $2 \
       AND NOT retried AND rotated_at > $6",
    live_session_and_user!(),
    returning_what_the_tokens_need!()
);

/// A refresh token as the statements compare it: its session, its generation and the
/// SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The session the token names.
    pub session_id: Uuid,
    /// The generation the token carries.
    pub generation: i64,
    /// SHA-256 of the token's secret.
    pub secret_hash: [u8; 32],
}

/// When a refresh happens, and the oldest login whose session it may still extend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshClock {
    /// Now, at the backends' precision ([`super::now`]).
    pub now: DateTime<Utc>,
    /// Sessions that began at or before this have reached `AUTH_SESSION_MAX_LIFETIME`.
    pub sessions_started_after: DateTime<Utc>,
}

/// What a rotation or a grace retry hands the domain: whose session it is, and when the token
/// it now holds expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The session's user.
    pub user_id: Uuid,
    /// The user's current email, for the new access token.
    pub email: String,
    /// The login, from which the session's absolute end is counted.
    pub session_started_at: DateTime<Utc>,
    /// When the token the row now holds expires.
    pub expires_at: DateTime<Utc>,
}

/// One of the statements above with its values, ready for either executor.
#[derive(Debug, Clone)]
pub(super) struct Returning {
    pub(super) sql: &'static str,
    pub(super) values: Vec<Value>,
}

impl Returning {
    /// `sql` with the values every statement takes (`$1` to `$5`), then `extra` (`$6`...).
    pub(super) fn new(
        sql: &'static str,
        credential: &Credential,
        clock: RefreshClock,
        extra: impl IntoIterator<Item = Value>,
    ) -> Self {
        let mut values = vec![
            credential.session_id.into(),
            clock.now.into(),
            clock.sessions_started_after.into(),
            credential.generation.into(),
            credential.secret_hash.to_vec().into(),
        ];
        values.extend(extra);
        Self { sql, values }
    }
}

/// A returned row, whichever executor read it. The column types are the statements':
/// a UUID, a text and two timestamps.
pub(super) trait ReturnedRow {
    fn uuid(&self, index: usize) -> Result<Uuid, StoreError>;
    fn text(&self, index: usize) -> Result<String, StoreError>;
    fn timestamp(&self, index: usize) -> Result<DateTime<Utc>, StoreError>;
}

impl Rotated {
    /// Reads the `RETURNING` list of [`ROTATE`] and [`RETRY`].
    pub(super) fn read(row: &impl ReturnedRow) -> Result<Self, StoreError> {
        Ok(Self {
            user_id: row.uuid(0)?,
            email: row.text(1)?,
            session_started_at: row.timestamp(2)?,
            expires_at: row.timestamp(3)?,
        })
    }
}

impl ReturnedRow for QueryResult {
    fn uuid(&self, index: usize) -> Result<Uuid, StoreError> {
        Ok(self.try_get_by_index(index)?)
    }

    fn text(&self, index: usize) -> Result<String, StoreError> {
        Ok(self.try_get_by_index(index)?)
    }

    fn timestamp(&self, index: usize) -> Result<DateTime<Utc>, StoreError> {
        Ok(self.try_get_by_index(index)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every placeholder a statement names is bound, and no value goes unused.
    #[test]
    fn each_statement_uses_exactly_the_values_it_is_given() {
        for (sql, values) in [(ROTATE, 7), (RETRY, 6)] {
            let highest = (1..=20)
                .filter(|n| sql.contains(&format!("${n}")))
                .max()
                .unwrap_or(0);
            assert_eq!(highest, values, "{sql}");
            for n in 1..=values {
                assert!(sql.contains(&format!("${n}")), "${n} unused in {sql}");
            }
        }
    }
}
