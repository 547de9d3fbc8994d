//! The `authd` command line: migrations and user administration.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, PASSWORD, TestApp, TestDatabase, assert_status, process::run_authd};
use tonic::Code;

on_both_backends!(
    a_user_added_by_the_cli_can_log_in,
    the_cli_refuses_a_duplicate_email,
    the_cli_refuses_a_short_password,
    a_user_disabled_by_the_cli_can_no_longer_log_in,
);

async fn add(db: &TestDatabase, email: &str, password: &str) -> std::process::Output {
    run_authd(
        db,
        &["user", "add", email, "--password-stdin"],
        &format!("{password}\n"),
    )
    .await
}

async fn a_user_added_by_the_cli_can_log_in(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let migrated = run_authd(&db, &["migrate"], "").await;
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let added = add(&db, "Alice@Example.com", PASSWORD).await;
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );

    let app = TestApp::spawn_on(db, &[]).await;
    app.login("alice@example.com", PASSWORD)
        .await
        .expect("login with the CLI's password");
}

async fn the_cli_refuses_a_duplicate_email(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    assert!(
        add(&db, "alice@example.com", PASSWORD)
            .await
            .status
            .success()
    );
    let again = add(&db, "ALICE@example.com", "another password").await;
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");

    // The first password still works: the duplicate changed nothing.
    let app = TestApp::spawn_on(db, &[]).await;
    app.login("alice@example.com", PASSWORD)
        .await
        .expect("original password");
}

async fn the_cli_refuses_a_short_password(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let short = add(&db, "alice@example.com", "seven77").await;
    assert!(!short.status.success());
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert!(stderr.contains("at least 8 bytes"), "{stderr}");

    let app = TestApp::spawn_on(db, &[]).await;
    let status = app.login("alice@example.com", "seven77").await.unwrap_err();
    assert_status(&status, Code::Unauthenticated, "INVALID_CREDENTIALS");
}

async fn a_user_disabled_by_the_cli_can_no_longer_log_in(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    assert!(
        add(&db, "alice@example.com", PASSWORD)
            .await
            .status
            .success()
    );
    let disabled = run_authd(&db, &["user", "disable", "alice@example.com"], "").await;
    assert!(
        disabled.status.success(),
        "{}",
        String::from_utf8_lossy(&disabled.stderr)
    );
    let unknown = run_authd(&db, &["user", "disable", "bob@example.com"], "").await;
    assert!(!unknown.status.success());

    let app = TestApp::spawn_on(db, &[]).await;
    let status = app.login("alice@example.com", PASSWORD).await.unwrap_err();
    assert_status(&status, Code::Unauthenticated, "INVALID_CREDENTIALS");
}
