//! Upgrading keeps every live session: a database written by the previous release (one
//! refresh-token row per rotation), migrated by the current one, then served.

use crate::common;

use authd::store::entity::legacy_refresh_token;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, TimeDelta, Utc};
use common::{
    Backend, TestApp, TestDatabase, assert_refresh_refused, refresh,
    rows::{row_counts, token_parts},
    validate,
};
use migration::MigratorTrait as _;
use sea_orm::{
    ConnectionTrait as _, Database, DatabaseConnection, EntityTrait as _, Statement, Value,
};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

on_both_backends!(
    live_tokens_from_the_previous_release_refresh_once_and_the_others_stay_refused,
    the_clean_up_removes_what_the_previous_release_left_behind,
);

/// The migrations of the previous release: the tables and the login attempts.
const PREVIOUS_RELEASE_MIGRATIONS: u32 = 2;

/// A raw refresh token as the previous release issued it: 32 random bytes in base64url.
fn old_token() -> String {
    URL_SAFE_NO_PAD.encode(Uuid::new_v4().as_bytes().repeat(2))
}

async fn execute(db: &DatabaseConnection, sql: &str, values: Vec<Value>) {
    let statement = Statement::from_sql_and_values(db.get_database_backend(), sql, values);
    db.execute_raw(statement).await.unwrap();
}

/// A session of the previous schema (its end and last refresh still on the session row).
async fn old_session(
    db: &DatabaseConnection,
    user_id: Uuid,
    expires_at: DateTime<Utc>,
    revoked: bool,
) -> Uuid {
    let id = Uuid::new_v4();
    let now = authd::store::now();
    let revoked_at = revoked.then_some(now - TimeDelta::minutes(5));
    execute(
        db,
        "INSERT INTO sessions \
           (id, user_id, created_at, expires_at, last_refreshed_at, revoked_at, revoked_reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        vec![
            id.into(),
            user_id.into(),
            (now - TimeDelta::days(2)).into(),
            expires_at.into(),
            (now - TimeDelta::hours(1)).into(),
            revoked_at.into(),
            revoked.then(|| "logout".to_owned()).into(),
        ],
    )
    .await;
    id
}

/// A refresh-token row of the previous schema: SHA-256 of the raw token, the parent it
/// replaced, used once its child exists.
async fn old_token_row(
    db: &DatabaseConnection,
    session_id: Uuid,
    raw: &str,
    parent: Option<Uuid>,
    expires_at: DateTime<Utc>,
    used: bool,
) -> Uuid {
    let id = Uuid::new_v4();
    let now = authd::store::now();
    let hash = Sha256::digest(raw.as_bytes()).to_vec();
    execute(
        db,
        "INSERT INTO refresh_tokens \
           (id, session_id, parent_id, token_hash, created_at, expires_at, used_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        vec![
            id.into(),
            session_id.into(),
            parent.into(),
            hash.into(),
            (now - TimeDelta::hours(1)).into(),
            expires_at.into(),
            used.then_some(now - TimeDelta::minutes(30)).into(),
        ],
    )
    .await;
    id
}

/// Raw tokens of a database the previous release wrote.
struct OldTokens {
    /// Live session one: its first (used) token and its current one.
    live_used: String,
    live_current: String,
    /// Live session two: a used token presented before anything else.
    other_used: String,
    other_current: String,
    /// A logged-out session's current token.
    revoked_current: String,
}

/// Builds the previous release's schema and fills it as that release would have.
async fn previous_release(db: &TestDatabase) -> OldTokens {
    let conn = Database::connect(db.url()).await.unwrap();
    migration::Migrator::up(&conn, Some(PREVIOUS_RELEASE_MIGRATIONS))
        .await
        .unwrap();
    let now = authd::store::now();
    let user_id = Uuid::new_v4();
    execute(
        &conn,
        "INSERT INTO users (id, email, password_hash, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5)",
        vec![
            user_id.into(),
            "alice@example.com".into(),
            "$argon2id$unused".into(),
            now.into(),
            now.into(),
        ],
    )
    .await;
    let week = now + TimeDelta::days(7);
    let tokens = OldTokens {
        live_used: old_token(),
        live_current: old_token(),
        other_used: old_token(),
        other_current: old_token(),
        revoked_current: old_token(),
    };
    for (used, current, revoked) in [
        (Some(&tokens.live_used), &tokens.live_current, false),
        (Some(&tokens.other_used), &tokens.other_current, false),
        (None, &tokens.revoked_current, true),
    ] {
        let session = old_session(&conn, user_id, week, revoked).await;
        let parent = match used {
            Some(raw) => Some(old_token_row(&conn, session, raw, None, week, true).await),
            None => None,
        };
        old_token_row(&conn, session, current, parent, week, false).await;
    }
    conn.close().await.unwrap();
    tokens
}

async fn live_tokens_from_the_previous_release_refresh_once_and_the_others_stay_refused(
    backend: Backend,
) {
    let db = TestDatabase::create(backend).await;
    let old = previous_release(&db).await;
    let app = TestApp::spawn_on(db, &[]).await;
    assert_eq!(
        row_counts(&app.db).await["refresh_tokens"],
        3,
        "one row per session"
    );

    // The live session's current token refreshes, into the new format; so does its successor.
    let upgraded = refresh(&app.client, &old.live_current)
        .await
        .expect("a live token from before the upgrade refreshes");
    assert_eq!(token_parts(&app.db, &upgraded.refresh_token).generation, 1);
    let newer = refresh(&app.client, &upgraded.refresh_token)
        .await
        .expect("and its successor");
    validate(&app.client, &newer.access_token)
        .await
        .expect("the session validates");
    // Its pre-upgrade token, now used, is reuse like any earlier generation.
    common::assert_reuse_revokes_session(
        &app.client,
        &old.live_current,
        &newer.refresh_token,
        &newer.access_token,
    )
    .await;
    assert_refresh_refused(&app.client, &old.live_used, "REFRESH_TOKEN_REUSED").await;

    // A token the previous release had already rotated: reuse, the session goes.
    assert_refresh_refused(&app.client, &old.other_used, "REFRESH_TOKEN_REUSED").await;
    assert_refresh_refused(&app.client, &old.other_current, "SESSION_REVOKED").await;

    // A session logged out before the upgrade stays logged out.
    assert_refresh_refused(&app.client, &old.revoked_current, "SESSION_REVOKED").await;
}

/// The rows the migration keeps for pre-upgrade tokens go once they expire, while the
/// sessions they belong to live on.
async fn the_clean_up_removes_what_the_previous_release_left_behind(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let old = previous_release(&db).await;
    let conn = Database::connect(db.url()).await.unwrap();
    // The used tokens expire, as some days after the upgrade; the current ones do not.
    execute(
        &conn,
        "UPDATE refresh_tokens SET expires_at = $1 WHERE used_at IS NOT NULL",
        vec![(authd::store::now() - TimeDelta::seconds(1)).into()],
    )
    .await;
    let app = TestApp::spawn_on(db, &[]).await;
    let before = row_counts(&app.db).await;
    assert_eq!(before["legacy_refresh_tokens"], 5);

    let store = authd::server::connect_and_migrate(&app.config.database)
        .await
        .unwrap();
    let policy = authd::cleanup::CleanupPolicy::new(&app.config.sessions);
    let report = authd::cleanup::run_once(&store, policy).await.unwrap();
    assert_eq!((report.sessions, report.legacy_refresh_tokens), (0, 2));
    let after = row_counts(&app.db).await;
    assert_eq!(after["legacy_refresh_tokens"], 3, "the current tokens stay");
    assert_eq!(after["sessions"], before["sessions"]);
    let kept = legacy_refresh_token::Entity::find()
        .all(&conn)
        .await
        .unwrap();
    assert!(kept.iter().all(|token| token.used_at.is_none()));
    refresh(&app.client, &old.live_current)
        .await
        .expect("the live session still refreshes");
}
