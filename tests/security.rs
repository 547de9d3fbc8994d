//! Security hardening: absolute session lifetime, bounded requests and hashing queue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use authd::store::entity::session;
use common::{
    Backend, PASSWORD, TestApp, assert_status, eventually, login, process::run_authd, refresh,
    validate,
};
use sea_orm::{Database, EntityTrait as _};
use tonic::Code;

on_both_backends!(
    a_session_cannot_refresh_past_its_max_lifetime,
    a_login_rehashes_a_password_made_with_other_parameters,
    set_password_revokes_every_session,
);

async fn stored_hash(app: &TestApp) -> String {
    let db = Database::connect(app.db.url()).await.unwrap();
    let user = authd::store::entity::user::Entity::find()
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    user.password_hash
}

async fn a_login_rehashes_a_password_made_with_other_parameters(backend: Backend) {
    // The user was added under m=256 (the test default); the server now runs m=512.
    let app = TestApp::spawn_with(backend, &[("AUTH_ARGON2_MEMORY_KIB", "512")]).await;
    let old_params = [("AUTH_ARGON2_MEMORY_KIB", "256")];
    common::add_user_with(&app.db, &old_params, "alice@example.com", PASSWORD).await;
    assert!(
        stored_hash(&app)
            .await
            .starts_with("$argon2id$v=19$m=256,t=1,p=1$")
    );

    let status = login(&app.client, "alice@example.com", "wrong password")
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "INVALID_CREDENTIALS");
    assert!(
        stored_hash(&app).await.contains("m=256"),
        "a failed login changes nothing"
    );

    login(&app.client, "alice@example.com", PASSWORD)
        .await
        .expect("login");
    let rehashed = stored_hash(&app).await;
    assert!(
        rehashed.starts_with("$argon2id$v=19$m=512,t=1,p=1$"),
        "{rehashed}"
    );
    login(&app.client, "alice@example.com", PASSWORD)
        .await
        .expect("login with the new hash");
    assert_eq!(
        stored_hash(&app).await,
        rehashed,
        "a current hash is left alone"
    );
}

async fn set_password_revokes_every_session(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_REVOCATION_POLL", "1s")]).await;
    let phone = app.user_with_session("alice@example.com").await;
    let laptop = login(&app.client, "alice@example.com", PASSWORD)
        .await
        .unwrap();

    let args = [
        "user",
        "set-password",
        "alice@example.com",
        "--password-stdin",
    ];
    let changed = run_authd(&app.db, &args, "a brand new passphrase\n").await;
    assert!(
        changed.status.success(),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );

    for session in [&phone, &laptop] {
        let status = refresh(&app.client, &session.refresh_token)
            .await
            .unwrap_err();
        assert_status(&status, Code::Unauthenticated, "SESSION_REVOKED");
        let status = eventually(
            Duration::from_secs(2),
            "Validate to see the revocation",
            || async { validate(&app.client, &session.access_token).await.err() },
        )
        .await;
        assert_status(&status, Code::Unauthenticated, "SESSION_REVOKED");
    }
    let status = login(&app.client, "alice@example.com", PASSWORD)
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "INVALID_CREDENTIALS");
    login(&app.client, "alice@example.com", "a brand new passphrase")
        .await
        .expect("new password");

    let unknown = run_authd(
        &app.db,
        &[
            "user",
            "set-password",
            "bob@example.com",
            "--password-stdin",
        ],
        "whatever123\n",
    )
    .await;
    assert!(!unknown.status.success(), "an unknown user is an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_refused_and_the_server_stays_healthy() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let app = TestApp::spawn(Backend::Sqlite).await;
    app.add_user("alice@example.com", PASSWORD).await;
    for size in [20 * 1024, 1024 * 1024] {
        let status = login(&app.client, &"a".repeat(size), PASSWORD)
            .await
            .unwrap_err();
        assert_status(&status, Code::ResourceExhausted, "REQUEST_TOO_LARGE");
    }
    // Just under the limit is an ordinary (invalid) request.
    let status = login(&app.client, &"a".repeat(15 * 1024), PASSWORD)
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    common::wait_for_health(app.addr, ServingStatus::Serving, Duration::from_secs(5)).await;
    login(&app.client, "alice@example.com", PASSWORD)
        .await
        .expect("still serving logins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_past_the_hashing_queue_is_turned_away() {
    use tonic_types::StatusExt as _;
    let slow = [
        ("AUTH_ARGON2_MEMORY_KIB", "19456"),
        ("AUTH_ARGON2_ITERATIONS", "6"),
        ("AUTH_PASSWORD_HASH_CONCURRENCY", "1"),
        ("AUTH_PASSWORD_HASH_QUEUE", "2"),
    ];
    let app = TestApp::spawn_with(Backend::Sqlite, &slow).await;
    app.add_user("alice@example.com", PASSWORD).await;
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let client = app.client.clone();
            tokio::spawn(async move { login(&client, "alice@example.com", PASSWORD).await })
        })
        .collect();
    let (mut admitted, mut turned_away) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(status) => {
                assert_status(&status, Code::ResourceExhausted, "OVERLOADED");
                assert!(
                    status.get_details_retry_info().is_some(),
                    "tells when to retry"
                );
                turned_away += 1;
            }
        }
    }
    assert!(admitted >= 1, "some logins go through");
    assert!(
        turned_away >= 1,
        "the rest are refused rather than queued without bound"
    );
    login(&app.client, "alice@example.com", PASSWORD)
        .await
        .expect("served again once idle");
}

async fn a_session_cannot_refresh_past_its_max_lifetime(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_SESSION_MAX_LIFETIME", "3s")]).await;
    let login = app.user_with_session("alice@example.com").await;
    assert!(
        login.refresh_expires_in <= 3,
        "the first token ends with the session"
    );

    // Rotation inside the lifetime works, but never moves the session's end.
    let rotated = refresh(&app.client, &login.refresh_token)
        .await
        .expect("refresh in time");
    assert!(rotated.refresh_expires_in <= 3);
    let db = Database::connect(app.db.url()).await.unwrap();
    let stored = session::Entity::find().one(&db).await.unwrap().unwrap();
    assert!(stored.expires_at - stored.created_at <= chrono::TimeDelta::seconds(3));

    eventually(Duration::from_secs(10), "the session's end", || async {
        (chrono::Utc::now() > stored.created_at + chrono::TimeDelta::seconds(3)).then_some(())
    })
    .await;
    let status = refresh(&app.client, &rotated.refresh_token)
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "SESSION_EXPIRED");
}
