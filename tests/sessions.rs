//! The refresh-token life cycle: rotation, reuse detection, logout, revocation seen by
//! Validate, restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use authd::store::entity::refresh_token;
use common::{
    Backend, PASSWORD, TestApp, TestDatabase, add_user, assert_status, eventually, login, logout,
    process::{AuthdProcess, run_authd},
    refresh, validate,
};
use sea_orm::{ColumnTrait as _, Database, EntityTrait as _, QueryFilter as _};
use sha2::{Digest as _, Sha256};
use tonic::Code;

on_both_backends!(
    refresh_rotates_within_the_session_and_reuse_revokes_it,
    refresh_input_is_checked,
    concurrent_refreshes_of_one_token_have_exactly_one_winner,
    concurrent_refreshes_across_two_processes_have_exactly_one_winner,
    concurrent_refreshes_of_many_sessions_keep_their_own_outcomes,
    an_expired_refresh_token_is_refused_as_expired,
    logout_revokes_only_that_session,
    logout_of_all_sessions_spares_other_users,
    logout_is_idempotent_and_accepts_unknown_tokens,
    a_logout_on_one_process_stops_validate_on_another_within_two_polls,
    refresh_racing_logout_never_outlives_the_logout,
    rotated_and_revoked_tokens_stay_rejected_after_a_restart,
    disabling_a_user_revokes_their_sessions,
    the_database_never_holds_a_raw_refresh_token,
    a_call_behind_a_held_lock_is_unavailable_and_changes_nothing,
);

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

async fn refresh_rotates_within_the_session_and_reuse_revokes_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = app.user_with_session("alice@example.com").await;

    let second = refresh(&app.client, &first.refresh_token)
        .await
        .expect("refresh");
    assert_eq!(second.session_id, first.session_id);
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(second.token_type, "Bearer");
    assert_eq!(second.expires_in, 15 * 60);
    assert_eq!(second.refresh_expires_in, 7 * 24 * 3600);
    let validated = validate(&app.client, &second.access_token)
        .await
        .expect("new access token");
    assert_eq!(validated.session_id, first.session_id);

    let db = Database::connect(app.db.url()).await.unwrap();
    let find = |token: &str| {
        refresh_token::Entity::find().filter(refresh_token::Column::TokenHash.eq(hash(token)))
    };
    let parent = find(&first.refresh_token).one(&db).await.unwrap().unwrap();
    let child = find(&second.refresh_token).one(&db).await.unwrap().unwrap();
    assert_eq!(
        child.parent_id,
        Some(parent.id),
        "the child records its parent"
    );
    assert!(parent.used_at.is_some() && child.used_at.is_none());

    let third = refresh(&app.client, &second.refresh_token)
        .await
        .expect("second refresh");

    // The first token, already used, comes back: theft. The whole session goes.
    let reuse = refresh(&app.client, &first.refresh_token)
        .await
        .unwrap_err();
    assert_status(&reuse, Code::Unauthenticated, "REFRESH_TOKEN_REUSED");
    let newest = refresh(&app.client, &third.refresh_token)
        .await
        .unwrap_err();
    assert_status(&newest, Code::Unauthenticated, "SESSION_REVOKED");
    let access = validate(&app.client, &third.access_token)
        .await
        .unwrap_err();
    assert_status(&access, Code::Unauthenticated, "SESSION_REVOKED");
}

async fn refresh_input_is_checked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let empty = refresh(&app.client, "").await.unwrap_err();
    assert_status(&empty, Code::InvalidArgument, "INVALID_ARGUMENT");
    let unknown = "A".repeat(43);
    for token in ["not-a-token", unknown.as_str(), &"é".repeat(30)] {
        let status = refresh(&app.client, token).await.unwrap_err();
        assert_status(&status, Code::Unauthenticated, "REFRESH_TOKEN_INVALID");
    }
    // An access token is no refresh token.
    let login = app.user_with_session("alice@example.com").await;
    let status = refresh(&app.client, &login.access_token).await.unwrap_err();
    assert_status(&status, Code::Unauthenticated, "REFRESH_TOKEN_INVALID");
}

/// Fires `count` refreshes of `token`, alternating between `clients`, all at once.
async fn race_refreshes(
    clients: &[common::Client],
    token: &str,
    count: usize,
) -> (usize, Vec<tonic::Status>) {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(count));
    let calls: Vec<_> = (0..count)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            let (token, barrier) = (token.to_owned(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                refresh(&client, &token).await
            })
        })
        .collect();
    let mut winners = 0;
    let mut failures = Vec::new();
    for call in futures_join_all(calls).await {
        match call {
            Ok(_) => winners += 1,
            Err(status) => failures.push(status),
        }
    }
    (winners, failures)
}

async fn futures_join_all<T: Send + 'static>(
    handles: impl IntoIterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await.expect("task"));
    }
    results
}

async fn concurrent_refreshes_of_one_token_have_exactly_one_winner(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_DB_MAX_CONNECTIONS", "16")]).await;
    let login = app.user_with_session("alice@example.com").await;
    let (winners, failures) =
        race_refreshes(std::slice::from_ref(&app.client), &login.refresh_token, 32).await;
    assert_eq!(winners, 1, "failures: {failures:?}");
    for status in &failures {
        assert_status(status, Code::Unauthenticated, "REFRESH_TOKEN_REUSED");
    }
}

async fn concurrent_refreshes_across_two_processes_have_exactly_one_winner(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let one = AuthdProcess::spawn(&db, &[]).await;
    let two = AuthdProcess::spawn(&db, &[]).await;
    let clients = [one.client().await, two.client().await];
    add_user(&db, "alice@example.com", PASSWORD).await;
    for round in 0..3 {
        let session = login(&clients[0], "alice@example.com", PASSWORD)
            .await
            .unwrap();
        let (winners, failures) = race_refreshes(&clients, &session.refresh_token, 32).await;
        assert_eq!(winners, 1, "round {round}, failures: {failures:?}");
        for status in &failures {
            assert_status(status, Code::Unauthenticated, "REFRESH_TOKEN_REUSED");
        }
    }
}

/// Refreshes of many sessions at once (on SQLite one transaction carries them, each in a
/// savepoint of its own): a refused one changes nothing, not even its own token, and takes
/// nothing from the others.
async fn concurrent_refreshes_of_many_sessions_keep_their_own_outcomes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.add_user("alice@example.com", PASSWORD).await;
    let (mut live, mut revoked) = (Vec::new(), Vec::new());
    for i in 0..48 {
        let session = app.login("alice@example.com", PASSWORD).await.unwrap();
        if i % 3 == 0 {
            logout(&app.client, &session.refresh_token, false)
                .await
                .unwrap();
            revoked.push(session);
        } else {
            live.push(session);
        }
    }
    let all: Vec<_> = live.iter().chain(&revoked).cloned().collect();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(all.len()));
    let calls = all.iter().map(|session| {
        let (client, barrier) = (app.client.clone(), barrier.clone());
        let token = session.refresh_token.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            refresh(&client, &token).await
        })
    });
    let outcomes = futures_join_all(calls.collect::<Vec<_>>()).await;
    let (live_outcomes, revoked_outcomes) = outcomes.split_at(live.len());
    for (session, outcome) in live.iter().zip(live_outcomes) {
        let rotated = outcome.as_ref().expect("a live session rotates");
        assert_eq!(rotated.session_id, session.session_id);
    }
    for outcome in revoked_outcomes {
        assert_status(
            outcome.as_ref().unwrap_err(),
            Code::Unauthenticated,
            "SESSION_REVOKED",
        );
    }

    let db = Database::connect(app.db.url()).await.unwrap();
    let tokens = refresh_token::Entity::find().all(&db).await.unwrap();
    let stored = |token: &str| {
        let hash = hash(token);
        let row = tokens.iter().find(|t| t.token_hash == hash).unwrap();
        let children = tokens.iter().filter(|t| t.parent_id == Some(row.id));
        (row.used_at.is_some(), children.count())
    };
    for session in &live {
        assert_eq!(
            stored(&session.refresh_token),
            (true, 1),
            "a live session's token"
        );
    }
    for session in &revoked {
        assert_eq!(
            stored(&session.refresh_token),
            (false, 0),
            "a revoked session's token"
        );
    }
}

async fn an_expired_refresh_token_is_refused_as_expired(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_REFRESH_TOKEN_TTL", "1s")]).await;
    let login = app.user_with_session("alice@example.com").await;
    assert_eq!(login.refresh_expires_in, 1);
    let db = Database::connect(app.db.url()).await.unwrap();
    let stored = refresh_token::Entity::find()
        .filter(refresh_token::Column::TokenHash.eq(hash(&login.refresh_token)))
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    // Trying the token would rotate it while still valid, so wait on the clock instead.
    eventually(
        Duration::from_secs(10),
        "the refresh token's expiry",
        || async { (chrono::Utc::now() > stored.expires_at).then_some(()) },
    )
    .await;
    let status = refresh(&app.client, &login.refresh_token)
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "REFRESH_TOKEN_EXPIRED");
}

async fn logout_revokes_only_that_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let phone = app.user_with_session("alice@example.com").await;
    let laptop = app.login("alice@example.com", PASSWORD).await.unwrap();

    logout(&app.client, &phone.refresh_token, false)
        .await
        .expect("logout");

    let status = refresh(&app.client, &phone.refresh_token)
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "SESSION_REVOKED");
    let status = validate(&app.client, &phone.access_token)
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "SESSION_REVOKED");

    validate(&app.client, &laptop.access_token)
        .await
        .expect("other session validates");
    refresh(&app.client, &laptop.refresh_token)
        .await
        .expect("other session refreshes");
}

async fn logout_of_all_sessions_spares_other_users(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice_phone = app.user_with_session("alice@example.com").await;
    let alice_laptop = app.login("alice@example.com", PASSWORD).await.unwrap();
    let bob = app.user_with_session("bob@example.com").await;

    logout(&app.client, &alice_phone.refresh_token, true)
        .await
        .expect("logout everywhere");

    for session in [&alice_phone, &alice_laptop] {
        let status = validate(&app.client, &session.access_token)
            .await
            .unwrap_err();
        assert_status(&status, Code::Unauthenticated, "SESSION_REVOKED");
        let status = refresh(&app.client, &session.refresh_token)
            .await
            .unwrap_err();
        assert_status(&status, Code::Unauthenticated, "SESSION_REVOKED");
    }
    validate(&app.client, &bob.access_token)
        .await
        .expect("bob's session validates");
    refresh(&app.client, &bob.refresh_token)
        .await
        .expect("bob's session refreshes");
}

async fn logout_is_idempotent_and_accepts_unknown_tokens(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let session = app.user_with_session("alice@example.com").await;
    logout(&app.client, &session.refresh_token, false)
        .await
        .expect("first logout");
    logout(&app.client, &session.refresh_token, false)
        .await
        .expect("second logout");
    logout(&app.client, &session.refresh_token, true)
        .await
        .expect("logout everywhere after");
    logout(&app.client, &"B".repeat(43), false)
        .await
        .expect("unknown token");
    logout(&app.client, "garbage", true)
        .await
        .expect("malformed token");
    let status = logout(&app.client, "", false).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
}

const POLL: [(&str, &str); 1] = [("AUTH_REVOCATION_POLL", "1s")];

async fn a_logout_on_one_process_stops_validate_on_another_within_two_polls(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let one = AuthdProcess::spawn(&db, &POLL).await;
    let two = AuthdProcess::spawn(&db, &POLL).await;
    let (one, two) = (one.client().await, two.client().await);
    add_user(&db, "alice@example.com", PASSWORD).await;
    let session = login(&one, "alice@example.com", PASSWORD).await.unwrap();
    validate(&two, &session.access_token)
        .await
        .expect("valid on the other process");

    logout(&one, &session.refresh_token, false).await.unwrap();
    let status = eventually(
        Duration::from_secs(2),
        "the other process to see the logout",
        || async { validate(&two, &session.access_token).await.err() },
    )
    .await;
    assert_status(&status, Code::Unauthenticated, "SESSION_REVOKED");
}

async fn refresh_racing_logout_never_outlives_the_logout(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let refresher = AuthdProcess::spawn(&db, &POLL).await;
    let logouter = AuthdProcess::spawn(&db, &POLL).await;
    let (refresher, logouter) = (refresher.client().await, logouter.client().await);
    add_user(&db, "alice@example.com", PASSWORD).await;

    for round in 0..16 {
        let session = login(&refresher, "alice@example.com", PASSWORD)
            .await
            .unwrap();
        let racing_refresh = tokio::spawn({
            let (client, token) = (refresher.clone(), session.refresh_token.clone());
            async move { refresh(&client, &token).await }
        });
        logout(&logouter, &session.refresh_token, false)
            .await
            .expect("logout");
        // Logout has answered: from here on nothing of the session may work.
        let refreshed = racing_refresh.await.unwrap().ok();

        let mut refresh_tokens = vec![session.refresh_token.clone()];
        let mut access_tokens = vec![session.access_token.clone()];
        if let Some(pair) = refreshed {
            refresh_tokens.push(pair.refresh_token);
            access_tokens.push(pair.access_token);
        }
        for token in &refresh_tokens {
            for client in [&refresher, &logouter] {
                let result = refresh(client, token).await;
                assert!(
                    result.is_err(),
                    "round {round}: a refresh token outlived the logout"
                );
            }
        }
        for token in &access_tokens {
            let status = validate(&logouter, token).await.unwrap_err();
            assert_status(&status, Code::Unauthenticated, "SESSION_REVOKED");
            eventually(
                Duration::from_secs(2),
                "the other process to see the logout",
                || async { validate(&refresher, token).await.err() },
            )
            .await;
        }
    }
}

async fn rotated_and_revoked_tokens_stay_rejected_after_a_restart(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let rotated = app.user_with_session("alice@example.com").await;
    let current = refresh(&app.client, &rotated.refresh_token).await.unwrap();
    let logged_out = app.login("alice@example.com", PASSWORD).await.unwrap();
    logout(&app.client, &logged_out.refresh_token, false)
        .await
        .unwrap();

    let app = TestApp::spawn_on(app.stop().await, &[]).await;

    let status = validate(&app.client, &logged_out.access_token)
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "SESSION_REVOKED");
    let status = refresh(&app.client, &logged_out.refresh_token)
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "SESSION_REVOKED");
    validate(&app.client, &current.access_token)
        .await
        .expect("current session still valid");
    let status = refresh(&app.client, &rotated.refresh_token)
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "REFRESH_TOKEN_REUSED");
}

async fn disabling_a_user_revokes_their_sessions(backend: Backend) {
    let app = TestApp::spawn_with(backend, &POLL).await;
    let session = app.user_with_session("alice@example.com").await;
    let disabled = run_authd(&app.db, &["user", "disable", "alice@example.com"], "").await;
    assert!(
        disabled.status.success(),
        "{}",
        String::from_utf8_lossy(&disabled.stderr)
    );

    common::assert_session_revoked(&app.client, &session.refresh_token, &session.access_token)
        .await;
}

async fn the_database_never_holds_a_raw_refresh_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = app.user_with_session("alice@example.com").await;
    let second = refresh(&app.client, &first.refresh_token).await.unwrap();
    let other = app.login("alice@example.com", PASSWORD).await.unwrap();
    logout(&app.client, &other.refresh_token, false)
        .await
        .unwrap();
    let raw_tokens = [
        &first.refresh_token,
        &second.refresh_token,
        &other.refresh_token,
    ];

    let db = app.stop().await;
    let stored: Vec<u8> = match &db {
        TestDatabase::Sqlite { dir, .. } => {
            // Every byte SQLite keeps: the database, its WAL and shared memory.
            let mut bytes = Vec::new();
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
            }
            bytes
        }
        TestDatabase::Postgres { .. } => {
            use sea_orm::{ConnectionTrait as _, Statement};
            let conn = Database::connect(db.url()).await.unwrap();
            let mut text = String::new();
            for table in ["users", "sessions", "refresh_tokens"] {
                let sql = format!("SELECT t::text AS row FROM {table} t");
                let rows = conn
                    .query_all_raw(Statement::from_string(conn.get_database_backend(), sql))
                    .await
                    .unwrap();
                for row in rows {
                    text.push_str(&row.try_get::<String>("", "row").unwrap());
                }
            }
            text.into_bytes()
        }
    };
    assert!(!stored.is_empty());
    for token in raw_tokens {
        let found = stored.windows(token.len()).any(|w| w == token.as_bytes());
        assert!(!found, "a raw refresh token is stored");
        // Its hash is there, so the search did look at the right rows.
        let hashed = hash(token);
        let as_stored = match db.backend() {
            Backend::Sqlite => hashed,
            Backend::Postgres => hashed
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes(),
        };
        assert!(
            stored.windows(as_stored.len()).any(|w| w == as_stored),
            "its hash is stored"
        );
    }
}

/// A refresh or login that cannot get its lock within `AUTH_DB_LOCK_TIMEOUT` (another writer
/// holds it) answers UNAVAILABLE and leaves the token as it was.
async fn a_call_behind_a_held_lock_is_unavailable_and_changes_nothing(backend: Backend) {
    use sea_orm::sqlx::{Connection as _, Executor as _, PgConnection, SqliteConnection};
    let app = TestApp::spawn_with(backend, &[("AUTH_DB_LOCK_TIMEOUT", "200ms")]).await;
    let session = app.user_with_session("alice@example.com").await;

    // SQLite: take the database's one write lock. PostgreSQL: lock the tokens table.
    let (mut sqlite, mut postgres) = (None, None);
    match backend {
        Backend::Sqlite => {
            let mut conn = SqliteConnection::connect(app.db.url()).await.unwrap();
            conn.execute("BEGIN IMMEDIATE").await.unwrap();
            sqlite = Some(conn);
        }
        Backend::Postgres => {
            let mut conn = PgConnection::connect(app.db.url()).await.unwrap();
            conn.execute("BEGIN; LOCK TABLE refresh_tokens IN EXCLUSIVE MODE")
                .await
                .unwrap();
            postgres = Some(conn);
        }
    }
    let status = refresh(&app.client, &session.refresh_token)
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "UNAVAILABLE");
    let status = app.login("alice@example.com", PASSWORD).await.unwrap_err();
    assert_status(&status, Code::Unavailable, "UNAVAILABLE");
    if let Some(conn) = sqlite.as_mut() {
        conn.execute("ROLLBACK").await.unwrap();
    }
    if let Some(conn) = postgres.as_mut() {
        conn.execute("ROLLBACK").await.unwrap();
    }

    let rotated = refresh(&app.client, &session.refresh_token).await;
    assert!(
        rotated.is_ok(),
        "the token was left half-rotated: {rotated:?}"
    );
}
