//! The statements that hand out a session's next tokens, written once for every backend.
//!
//! Each is a single conditional `UPDATE ... RETURNING` of sessions' `refresh_tokens` rows.
//! The row lock it takes decides the one winner among concurrent refreshes, in this process and
//! across replicas; its conditions are every rule a refresh must pass (the presented generation
//! and secret, the token's expiry, a live session, an enabled user). A rotation statement
//! carries up to [`MAX_BATCH`] rotations of distinct sessions (`UPDATE ... FROM (VALUES ...)`):
//! each row passes or fails its conditions on its own, and one statement is one commit for all.
//! The text uses `$N` placeholders, which PostgreSQL and sqlx's SQLite driver bind by number,
//! and names the VALUES columns `column1`... as both name them.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sea_orm::{QueryResult, Value};
use uuid::Uuid;

use super::{StoreError, sessions::ClientSeen};

/// Rotations carried by one statement at most: it holds its rows' locks (and on SQLite the
/// write lock) until it commits, so this bounds how long other writers wait.
pub const MAX_BATCH: usize = 64;

/// The session is not revoked and its user is enabled (a missing row reads NULL: refused).
/// Scalar subqueries, not `EXISTS`: PostgreSQL turns an `EXISTS` into a semi-join, and for a
/// batch it hashes the VALUES list against a scan of the whole `sessions` table, which grows
/// with every live session; a scalar subquery stays one primary-key lookup per updated row.
macro_rules! live_session_and_user {
    () => {
        " AND (SELECT s.revoked_at IS NULL FROM sessions s \
           WHERE s.id = refresh_tokens.session_id) \
         AND (SELECT u.disabled_at IS NULL FROM users u \
           WHERE u.id = refresh_tokens.user_id)"
    };
}

/// What the access token and the response need (read by [`Rotated::read`]). The email by a
/// scalar subquery: SQLite's `RETURNING` cannot name another table of an `UPDATE ... FROM`.
macro_rules! returning_what_the_tokens_need {
    () => {
        " RETURNING session_id, user_id, \
           (SELECT u.email FROM users u WHERE u.id = refresh_tokens.user_id), \
           session_started_at, expires_at"
    };
}

/// Values per rotation in [`rotate_sql`]'s VALUES list: session, generation, secret hash,
/// successor's secret hash, successor's expiry, now, the oldest login still alive, and the
/// client's address and User-Agent.
const ROTATION_VALUES: usize = 9;

/// Replaces each presented current token with its successor.
fn rotate_sql(rotations: usize) -> String {
    let rows: Vec<String> = (0..rotations)
        .map(|row| {
            let numbers: Vec<String> = (1..=ROTATION_VALUES)
                .map(|column| format!("${}", row * ROTATION_VALUES + column))
                .collect();
            format!("({})", numbers.join(", "))
        })
        .collect();
    format!(
        concat!(
            "UPDATE refresh_tokens SET generation = generation + 1, secret_hash = v.column4, \
               rotated_at = v.column6, expires_at = v.column5, retried = FALSE, \
               refreshed_address = v.column8, refreshed_user_agent = v.column9 \
             FROM (VALUES {}) AS v \
             WHERE refresh_tokens.session_id = v.column1 \
               AND refresh_tokens.generation = v.column2 \
               AND refresh_tokens.secret_hash = v.column3 \
               AND refresh_tokens.expires_at > v.column6 \
               AND refresh_tokens.session_started_at > v.column7",
            live_session_and_user!(),
            returning_what_the_tokens_need!()
        ),
        rows.join(", ")
    )
}

/// [`rotate_sql`] for each batch size, built once (and prepared once per connection).
static ROTATE: LazyLock<Vec<String>> = LazyLock::new(|| (0..=MAX_BATCH).map(rotate_sql).collect());

/// The rotation statement for a batch of `rotations` (at most [`MAX_BATCH`]), as it runs;
/// public so that its query plan can be checked against a real database.
pub fn rotation_statement(rotations: usize) -> &'static str {
    &ROTATE[rotations.min(MAX_BATCH)]
}

/// Spends the one reuse-grace retry of the session's current token, if it was issued after
/// `$6`: the caller hands that same token out again. `$1` session, `$2` now, `$3` the oldest
/// login still alive, `$4` the current generation, `$5` its secret's hash.
pub(super) const RETRY: &str = concat!(
    "UPDATE refresh_tokens SET retried = TRUE \
     WHERE session_id = $1 AND generation = $4 AND secret_hash = $5 AND expires_at > $2 \
       AND session_started_at > $3 AND NOT retried AND rotated_at > $6",
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
    /// The session.
    pub session_id: Uuid,
    /// The session's user.
    pub user_id: Uuid,
    /// The user's current email, for the new access token.
    pub email: String,
    /// The login, from which the session's absolute end is counted.
    pub session_started_at: DateTime<Utc>,
    /// When the token the row now holds expires.
    pub expires_at: DateTime<Utc>,
}

/// One rotation: the presented current token and its successor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rotation {
    pub(super) presented: Credential,
    pub(super) clock: RefreshClock,
    pub(super) successor_hash: [u8; 32],
    pub(super) expires_at: DateTime<Utc>,
    pub(super) client: ClientSeen,
}

/// One of the statements above with its values.
#[derive(Debug, Clone)]
pub(super) struct Returning {
    pub(super) sql: &'static str,
    pub(super) values: Vec<Value>,
}

impl Returning {
    /// The rotation statement for `rotations`, at most [`MAX_BATCH`] of distinct sessions.
    pub(super) fn rotate(rotations: &[Rotation]) -> Self {
        let values = rotations
            .iter()
            .flat_map(|rotation| {
                let presented = &rotation.presented;
                [
                    presented.session_id.into(),
                    presented.generation.into(),
                    presented.secret_hash.to_vec().into(),
                    rotation.successor_hash.to_vec().into(),
                    rotation.expires_at.into(),
                    rotation.clock.now.into(),
                    rotation.clock.sessions_started_after.into(),
                    rotation.client.address.clone().into(),
                    rotation.client.user_agent.clone().into(),
                ]
            })
            .collect();
        Self {
            sql: rotation_statement(rotations.len()),
            values,
        }
    }

    /// The grace retry of `current`, issued after `rotated_after`.
    pub(super) fn retry(
        current: &Credential,
        clock: RefreshClock,
        rotated_after: DateTime<Utc>,
    ) -> Self {
        Self {
            sql: RETRY,
            values: vec![
                current.session_id.into(),
                clock.now.into(),
                clock.sessions_started_after.into(),
                current.generation.into(),
                current.secret_hash.to_vec().into(),
                rotated_after.into(),
            ],
        }
    }
}

impl Rotated {
    /// Reads a row of the `RETURNING` list of the statements above.
    pub(super) fn read(row: &QueryResult) -> Result<Self, StoreError> {
        Ok(Self {
            session_id: row.try_get_by_index(0)?,
            user_id: row.try_get_by_index(1)?,
            email: row.try_get_by_index(2)?,
            session_started_at: row.try_get_by_index(3)?,
            expires_at: row.try_get_by_index(4)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placeholders(sql: &str) -> Vec<usize> {
        let mut numbers: Vec<usize> = sql
            .split('$')
            .skip(1)
            .map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().unwrap()
            })
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        numbers
    }

    /// Every placeholder a statement names is bound, and no value goes unused.
    #[test]
    fn each_statement_uses_exactly_the_values_it_is_given() {
        let credential = Credential {
            session_id: Uuid::nil(),
            generation: 1,
            secret_hash: [0; 32],
        };
        let clock = RefreshClock {
            now: Utc::now(),
            sessions_started_after: Utc::now(),
        };
        let rotation = Rotation {
            presented: credential.clone(),
            clock,
            successor_hash: [1; 32],
            expires_at: Utc::now(),
            client: ClientSeen::default(),
        };
        for rotations in [1, 2, MAX_BATCH] {
            let statement = Returning::rotate(&vec![rotation.clone(); rotations]);
            let expected: Vec<usize> = (1..=statement.values.len()).collect();
            assert_eq!(placeholders(statement.sql), expected);
            assert_eq!(statement.values.len(), rotations * ROTATION_VALUES);
        }
        let retry = Returning::retry(&credential, clock, Utc::now());
        assert_eq!(
            placeholders(retry.sql),
            (1..=retry.values.len()).collect::<Vec<_>>()
        );
    }
}
