//! The refresh-token life cycle: rotation, reuse detection, logout, revocation seen by
//! Validate, restarts.

use crate::common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    Backend, PASSWORD, TestApp, TestDatabase, add_user, assert_refresh_refused, assert_refused,
    assert_status, assert_validate_refused, eventually, login, logout,
    process::{AuthdProcess, run_authd},
    refresh,
    rows::{refresh_row, row_counts, token_parts},
    validate,
};
use sea_orm::{ConnectionTrait as _, Database, Statement};
use tonic::Code;

on_both_backends!(
    refresh_rotates_within_the_session_and_reuse_revokes_it,
    reuse_of_a_token_fifty_generations_old_revokes_the_session,
    two_thousand_refreshes_leave_every_table_the_same_size,
    a_token_with_a_flipped_tag_bit_is_invalid_and_the_session_lives_on,
    a_sealed_token_with_a_wrong_secret_is_invalid_and_the_session_lives_on,
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
    a_disabled_user_cannot_refresh_even_before_their_sessions_are_revoked,
    no_login_racing_user_disable_outlives_it,
    no_login_racing_user_set_password_outlives_it,
    the_database_never_holds_a_raw_refresh_token,
    a_call_behind_a_held_lock_is_unavailable_and_changes_nothing,
);

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

    // The session's one row now holds the second generation.
    let row = refresh_row(&app.db, &first.session_id).await;
    let parts = token_parts(&app.db, &second.refresh_token);
    assert_eq!((row.generation, parts.generation), (2, 2));
    assert_eq!(row.secret_hash, parts.secret_hash);
    assert_eq!(parts.session_id.to_string(), first.session_id);

    let third = refresh(&app.client, &second.refresh_token)
        .await
        .expect("second refresh");

    // The first token, already used, comes back: theft. The whole session goes.
    common::assert_reuse_revokes_session(
        &app.client,
        &first.refresh_token,
        &third.refresh_token,
        &third.access_token,
    )
    .await;
}

/// Rotates `token` `times` times; returns the newest pair.
async fn rotate_times(
    client: &common::Client,
    token: &str,
    times: usize,
) -> authd::proto::RefreshResponse {
    let mut newest = refresh(client, token).await.expect("refresh");
    for _ in 1..times {
        newest = refresh(client, &newest.refresh_token)
            .await
            .expect("refresh");
    }
    newest
}

async fn reuse_of_a_token_fifty_generations_old_revokes_the_session(backend: Backend) {
    let app = TestApp::spawn_with(backend, &POLL).await;
    let old = app.user_with_session("alice@example.com").await;
    let newest = rotate_times(&app.client, &old.refresh_token, 50).await;
    assert_eq!(token_parts(&app.db, &newest.refresh_token).generation, 51);

    common::assert_reuse_revokes_session(
        &app.client,
        &old.refresh_token,
        &newest.refresh_token,
        &newest.access_token,
    )
    .await;
}

/// Storage grows with sessions, never with refreshes: a rotation rewrites the session's row.
async fn two_thousand_refreshes_leave_every_table_the_same_size(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.user_with_session("alice@example.com").await;
    let before = row_counts(&app.db).await;
    assert_eq!(before["refresh_tokens"], 1);
    let newest = rotate_times(&app.client, &login.refresh_token, 2000).await;
    assert_eq!(row_counts(&app.db).await, before);
    assert_eq!(
        refresh_row(&app.db, &login.session_id).await.generation,
        2001
    );
    validate(&app.client, &newest.access_token)
        .await
        .expect("the newest access token");
}

/// Asserts that `forged` is refused as REFRESH_TOKEN_INVALID and that the session it imitates
/// is untouched: its current token still refreshes.
async fn assert_forgery_refused(app: &TestApp, forged: &str, current: &str) {
    assert_refresh_refused(&app.client, forged, "REFRESH_TOKEN_INVALID").await;
    let status = logout(&app.client, forged, true).await;
    assert!(status.is_ok(), "logout answers OK: {status:?}");
    refresh(&app.client, current)
        .await
        .expect("the session lives on");
}

async fn a_token_with_a_flipped_tag_bit_is_invalid_and_the_session_lives_on(backend: Backend) {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    let app = TestApp::spawn(backend).await;
    let login = app.user_with_session("alice@example.com").await;
    let mut bytes = URL_SAFE_NO_PAD.decode(&login.refresh_token).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    let forged = URL_SAFE_NO_PAD.encode(bytes);
    assert_forgery_refused(&app, &forged, &login.refresh_token).await;
}

/// Even sealed with the real key, a token must carry the session's current secret: knowing
/// (or holding the key for) a session id is not enough to use or revoke the session.
async fn a_sealed_token_with_a_wrong_secret_is_invalid_and_the_session_lives_on(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.user_with_session("alice@example.com").await;
    let session_id = uuid::Uuid::parse_str(&login.session_id).unwrap();
    let forged = app.db.refresh_key().seal(session_id, 1, &[9; 32]);
    assert_refresh_refused(&app.client, forged.expose(), "REFRESH_TOKEN_INVALID").await;
    refresh(&app.client, &login.refresh_token)
        .await
        .expect("the session lives on");
}

async fn refresh_input_is_checked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_refused(
        refresh(&app.client, "").await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let (unknown_legacy, unsealed) = ("A".repeat(43), "A".repeat(119));
    for token in [
        "not-a-token",
        unknown_legacy.as_str(),
        unsealed.as_str(),
        &"é".repeat(30),
    ] {
        assert_refresh_refused(&app.client, token, "REFRESH_TOKEN_INVALID").await;
    }
    // An access token is no refresh token.
    let login = app.user_with_session("alice@example.com").await;
    assert_refresh_refused(&app.client, &login.access_token, "REFRESH_TOKEN_INVALID").await;
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

    for session in &live {
        let row = refresh_row(&app.db, &session.session_id).await;
        assert_eq!(row.generation, 2, "a live session rotated once");
    }
    for session in &revoked {
        let row = refresh_row(&app.db, &session.session_id).await;
        let parts = token_parts(&app.db, &session.refresh_token);
        assert_eq!(
            (row.generation, row.secret_hash),
            (1, parts.secret_hash),
            "a revoked session's row is untouched"
        );
    }
}

async fn an_expired_refresh_token_is_refused_as_expired(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_REFRESH_TOKEN_TTL", "1s")]).await;
    let login = app.user_with_session("alice@example.com").await;
    assert_eq!(login.refresh_expires_in, 1);
    let stored = refresh_row(&app.db, &login.session_id).await;
    // Trying the token would rotate it while still valid, so wait on the clock instead.
    eventually(
        Duration::from_secs(10),
        "the refresh token's expiry",
        || async { (chrono::Utc::now() > stored.expires_at).then_some(()) },
    )
    .await;
    assert_refresh_refused(&app.client, &login.refresh_token, "REFRESH_TOKEN_EXPIRED").await;
}

async fn logout_revokes_only_that_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let phone = app.user_with_session("alice@example.com").await;
    let laptop = app.login("alice@example.com", PASSWORD).await.unwrap();

    logout(&app.client, &phone.refresh_token, false)
        .await
        .expect("logout");

    assert_refresh_refused(&app.client, &phone.refresh_token, "SESSION_REVOKED").await;
    assert_validate_refused(&app.client, &phone.access_token, "SESSION_REVOKED").await;

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
        assert_validate_refused(&app.client, &session.access_token, "SESSION_REVOKED").await;
        assert_refresh_refused(&app.client, &session.refresh_token, "SESSION_REVOKED").await;
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
    assert_refused(
        logout(&app.client, "", false).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
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
        // A token the racing refresh rotated away comes back as a reuse; a current one finds
        // its session revoked. Either way no refresh token outlives the logout.
        let rotated_away = refresh_tokens.len() > 1;
        for (index, token) in refresh_tokens.iter().enumerate() {
            let reason = if index == 0 && rotated_away {
                "REFRESH_TOKEN_REUSED"
            } else {
                "SESSION_REVOKED"
            };
            for client in [&refresher, &logouter] {
                let status = refresh(client, token).await.expect_err(&format!(
                    "round {round}: a refresh token outlived the logout"
                ));
                assert_status(&status, Code::Unauthenticated, reason);
            }
        }
        for token in &access_tokens {
            assert_validate_refused(&logouter, token, "SESSION_REVOKED").await;
            let status = eventually(
                Duration::from_secs(2),
                "the other process to see the logout",
                || async { validate(&refresher, token).await.err() },
            )
            .await;
            assert_status(&status, Code::Unauthenticated, "SESSION_REVOKED");
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

    assert_validate_refused(&app.client, &logged_out.access_token, "SESSION_REVOKED").await;
    assert_refresh_refused(&app.client, &logged_out.refresh_token, "SESSION_REVOKED").await;
    validate(&app.client, &current.access_token)
        .await
        .expect("current session still valid");
    assert_refresh_refused(&app.client, &rotated.refresh_token, "REFRESH_TOKEN_REUSED").await;
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

/// The rotation itself checks the user: a user marked disabled (here by hand, without the
/// revocations `authd user disable` adds) refreshes no more.
async fn a_disabled_user_cannot_refresh_even_before_their_sessions_are_revoked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let session = app.user_with_session("alice@example.com").await;
    let conn = Database::connect(app.db.url()).await.unwrap();
    conn.execute_raw(Statement::from_sql_and_values(
        conn.get_database_backend(),
        "UPDATE users SET disabled_at = $1",
        [authd::store::now().into()],
    ))
    .await
    .unwrap();
    assert_refresh_refused(&app.client, &session.refresh_token, "SESSION_REVOKED").await;
}

/// One login attempt: when it started and ended, and the session it opened, if any.
type Attempt = (Instant, Instant, Option<authd::proto::LoginResponse>);

/// Logins of one user keep coming from several tasks while `change` (a CLI command in another
/// process, an AdminService call) disables the user or changes their password. Once it has
/// returned, no session of the user works, whichever side of it its login fell on. `extra`:
/// settings the change needs.
pub(crate) async fn no_login_racing_a_change_outlives_it(
    backend: Backend,
    extra: &[(&str, &str)],
    change: impl AsyncFnOnce(&TestApp),
) {
    // The logins after the change fail: no throttle may turn them into another answer.
    let mut settings = vec![
        POLL[0],
        ("AUTH_LOGIN_FREE_ATTEMPTS", "1000"),
        ("AUTH_LOGIN_ADDRESS_FREE_ATTEMPTS", "100000"),
    ];
    settings.extend_from_slice(extra);
    let app = TestApp::spawn_with(backend, &settings).await;
    app.add_user("alice@example.com", PASSWORD).await;
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop, attempts) = (app.client.clone(), stop.clone(), attempts.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let session = match login(&client, "alice@example.com", PASSWORD).await {
                        Ok(session) => Some(session),
                        Err(status) => {
                            assert_status(&status, Code::Unauthenticated, "INVALID_CREDENTIALS");
                            None
                        }
                    };
                    attempts
                        .lock()
                        .unwrap()
                        .push((started, Instant::now(), session));
                }
            })
        })
        .collect();
    let count_started_after = |moment: Instant| {
        let attempts = attempts.lock().unwrap();
        attempts
            .iter()
            .filter(|(start, ..)| *start > moment)
            .count()
    };
    let test_started = Instant::now();
    eventually(Duration::from_secs(10), "logins under way", || async {
        (count_started_after(test_started) >= 8).then_some(())
    })
    .await;
    let command_started = Instant::now();
    change(&app).await;
    let command_returned = Instant::now();
    eventually(
        Duration::from_secs(10),
        "logins after the command",
        || async { (count_started_after(command_returned) >= 8).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let attempts = std::mem::take(&mut *attempts.lock().unwrap());
    let overlapped = attempts
        .iter()
        .any(|(start, end, _)| *start < command_returned && *end > command_started);
    assert!(
        overlapped,
        "no login overlapped the change: the test proved nothing"
    );
    let sessions: Vec<_> = attempts.into_iter().filter_map(|(.., s)| s).collect();
    assert!(!sessions.is_empty(), "no login succeeded before the change");
    for session in &sessions {
        common::assert_session_revoked(&app.client, &session.refresh_token, &session.access_token)
            .await;
    }
}

/// `authd ARGS`, fed `stdin`, which must succeed.
async fn run_user_command(app: &TestApp, args: &[&str], stdin: &str) {
    let output = run_authd(&app.db, args, stdin).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn no_login_racing_user_disable_outlives_it(backend: Backend) {
    let args = ["user", "disable", "alice@example.com"];
    no_login_racing_a_change_outlives_it(backend, &[], async |app| {
        run_user_command(app, &args, "").await
    })
    .await;
}

async fn no_login_racing_user_set_password_outlives_it(backend: Backend) {
    let args = [
        "user",
        "set-password",
        "alice@example.com",
        "--password-stdin",
    ];
    let new_password = "a new passphrase nobody else knows\n";
    no_login_racing_a_change_outlives_it(backend, &[], async |app| {
        run_user_command(app, &args, new_password).await
    })
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
    // The sessions' current tokens, whose secrets' hashes the rows hold.
    let current = [
        token_parts(&app.db, &second.refresh_token),
        token_parts(&app.db, &other.refresh_token),
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
    // Bytes as each backend keeps them: raw in SQLite's pages, hex in PostgreSQL's text.
    let as_stored = |bytes: &[u8]| match db.backend() {
        Backend::Sqlite => bytes.to_vec(),
        Backend::Postgres => bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into_bytes(),
    };
    let holds = |bytes: &[u8]| stored.windows(bytes.len()).any(|w| w == bytes);
    for token in raw_tokens {
        assert!(!holds(token.as_bytes()), "a raw refresh token is stored");
        let secret = secret_of(token);
        assert!(!holds(&as_stored(&secret)), "a token's secret is stored");
    }
    for parts in current {
        // Its hash is there, so the search did look at the right rows.
        assert!(holds(&as_stored(&parts.secret_hash)), "its hash is stored");
    }
}

/// The 32-byte secret inside a sealed token (after its format byte, session and generation).
fn secret_of(token: &str) -> Vec<u8> {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD.decode(token).unwrap()[25..57].to_vec()
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
    assert_refused(
        refresh(&app.client, &session.refresh_token).await,
        Code::Unavailable,
        "UNAVAILABLE",
    );
    assert_refused(
        app.login("alice@example.com", PASSWORD).await,
        Code::Unavailable,
        "UNAVAILABLE",
    );
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

/// A batch of rotations costs primary-key lookups per row, whatever the number of live
/// sessions: `sessions` and `users` are read only in per-row subplans, never joined against
/// the batch (PostgreSQL hashed an `EXISTS` over a scan of all 10,000 sessions here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rotation_batches_look_up_sessions_and_users_by_primary_key() {
    use authd::store::{MAX_BATCH, rotation_statement};
    use chrono::{Duration as Span, Utc};
    use sea_orm::sqlx::{self, Connection as _, Executor as _, PgConnection};

    let app = TestApp::spawn(Backend::Postgres).await;
    let mut conn = PgConnection::connect(app.db.url()).await.unwrap();
    conn.execute(
        "INSERT INTO users (id, email, password_hash, created_at, updated_at) \
         VALUES ('00000000-0000-0000-0000-000000000001', 'plan@example.com', 'unused', now(), now()); \
         INSERT INTO sessions (id, user_id, created_at) \
         SELECT md5(s::text)::uuid, '00000000-0000-0000-0000-000000000001', now() \
         FROM generate_series(1, 10000) AS s; \
         INSERT INTO refresh_tokens (session_id, user_id, session_started_at, generation, \
           secret_hash, rotated_at, expires_at, retried) \
         SELECT id, user_id, now(), 1, sha256(id::text::bytea), now(), now() + interval '1 day', \
           FALSE FROM sessions; \
         ANALYZE",
    )
    .await
    .unwrap();
    let sessions: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM sessions LIMIT $1")
        .bind(i64::try_from(MAX_BATCH).unwrap())
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let sql = format!("EXPLAIN {}", rotation_statement(MAX_BATCH));
    let now = Utc::now();
    let mut explain = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
    for session in &sessions {
        explain = explain
            .bind(*session)
            .bind(1_i64)
            .bind(vec![0_u8; 32])
            .bind(vec![1_u8; 32])
            .bind(now + Span::days(1))
            .bind(now)
            .bind(now - Span::days(30))
            .bind(Some("198.51.100.7"))
            .bind(Some("plan-check"));
    }
    let plan: Vec<String> = explain.fetch_all(&mut conn).await.unwrap();

    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut lookups = 0;
    for (at, line) in plan.iter().enumerate() {
        if !(line.contains(" on sessions ") || line.contains(" on users ")) {
            continue;
        }
        let parent = plan[..at]
            .iter()
            .rev()
            .find(|above| indent(above) < indent(line))
            .unwrap();
        assert!(
            parent.trim_start().starts_with("SubPlan"),
            "{line:?} is under {parent:?}, not a per-row subplan:\n{}",
            plan.join("\n")
        );
        lookups += 1;
    }
    assert!(
        lookups >= 2,
        "no lookups of sessions and users:\n{}",
        plan.join("\n")
    );
    assert!(
        plan.iter()
            .any(|line| line.contains("Index Scan using") && line.contains(" on refresh_tokens")),
        "the batch does not reach its rows by primary key:\n{}",
        plan.join("\n")
    );
}
