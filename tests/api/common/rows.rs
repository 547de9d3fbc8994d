//! What the database holds, read directly: row counts, a session's refresh row, and the
//! parts of a refresh token (opened with the database's own refresh key).
#![allow(unreachable_pub)]

use std::collections::BTreeMap;

use authd::{
    auth::{Opened, RefreshToken},
    store::entity::{refresh_token, user},
};
use sea_orm::{
    ColumnTrait as _, ConnectionTrait as _, Database, EntityTrait as _, QueryFilter as _, Statement,
};
use uuid::Uuid;

use super::TestDatabase;

/// Every table authd writes.
pub const TABLES: [&str; 6] = [
    "users",
    "sessions",
    "refresh_tokens",
    "legacy_refresh_tokens",
    "login_attempts",
    "known_login_clients",
];

/// How many rows each of [`TABLES`] holds.
pub async fn row_counts(db: &TestDatabase) -> BTreeMap<&'static str, i64> {
    let conn = Database::connect(db.url()).await.unwrap();
    let mut counts = BTreeMap::new();
    for table in TABLES {
        let sql = format!("SELECT COUNT(*) AS n FROM {table}");
        let row = conn
            .query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
            .await
            .unwrap()
            .unwrap();
        counts.insert(table, row.try_get::<i64>("", "n").unwrap());
    }
    // Dropped, not closed: `close` waits for every connection to come back, and a read has
    // no reason to wait on that.
    drop(conn);
    counts
}

/// What a refresh token names: its session and generation, and its secret's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenParts {
    pub session_id: Uuid,
    pub generation: i64,
    pub secret_hash: Vec<u8>,
}

/// Opens a token issued by the server of `db`.
pub fn token_parts(db: &TestDatabase, raw: &str) -> TokenParts {
    let token = RefreshToken::parse(raw.to_owned()).unwrap();
    match db.refresh_key().open(&token).unwrap() {
        Opened::Sealed(secret) => TokenParts {
            session_id: secret.session_id,
            generation: secret.generation,
            secret_hash: secret.secret_hash().to_vec(),
        },
        Opened::Legacy(_) => panic!("a pre-upgrade token"),
    }
}

/// The refresh row of a session.
pub async fn refresh_row(db: &TestDatabase, session_id: &str) -> refresh_token::Model {
    let conn = Database::connect(db.url()).await.unwrap();
    let id = Uuid::parse_str(session_id).unwrap();
    let row = refresh_token::Entity::find_by_id(id)
        .one(&conn)
        .await
        .unwrap()
        .expect("the session has a refresh row");
    // Dropped, not closed: `close` waits for every connection to come back, and a read has
    // no reason to wait on that.
    drop(conn);
    row
}

/// The stored PHC string of the user with `email`.
pub async fn password_hash(db: &TestDatabase, email: &str) -> String {
    let conn = Database::connect(db.url()).await.unwrap();
    let row = user::Entity::find()
        .filter(user::Column::Email.eq(email))
        .one(&conn)
        .await
        .unwrap()
        .expect("the user exists");
    // Dropped, not closed: `close` waits for every connection to come back, and a read has
    // no reason to wait on that.
    drop(conn);
    row.password_hash
}
