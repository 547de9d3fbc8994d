//! The `authd` command line: migrations and user administration.

use crate::common;

use common::{
    Backend, PASSWORD, TestApp, TestDatabase, assert_refused, assert_status, process::run_authd,
};
use tonic::Code;

on_both_backends!(
    a_user_added_by_the_cli_can_log_in,
    the_cli_refuses_a_duplicate_email,
    the_cli_holds_new_passwords_to_the_policy,
    a_password_logs_in_whatever_its_unicode_normalisation,
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

/// Asserts that a CLI command succeeded, showing what it printed on error if not.
#[track_caller]
fn assert_succeeded(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Adds a user with the CLI, which must succeed.
async fn add_ok(db: &TestDatabase, email: &str, password: &str) {
    assert_succeeded(&add(db, email, password).await);
}

async fn a_user_added_by_the_cli_can_log_in(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    assert_succeeded(&run_authd(&db, &["migrate"], "").await);
    add_ok(&db, "Alice@Example.com", PASSWORD).await;

    let app = TestApp::spawn_on(db, &[]).await;
    app.login("alice@example.com", PASSWORD)
        .await
        .expect("login with the CLI's password");
}

async fn the_cli_refuses_a_duplicate_email(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    add_ok(&db, "alice@example.com", PASSWORD).await;
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

/// SP 800-63B-4's rules for a password used alone, as `user add` applies them: each refusal
/// names its rule and never echoes the password, and no refused user can log in.
async fn the_cli_holds_new_passwords_to_the_policy(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let refused = [
        ("password", "at least 15 characters"),
        ("fourteen chars", "at least 15 characters"),
        // 8 bytes, but 2 characters.
        ("🔑🔒🔑🔒", "at least 15 characters"),
        ("1234567890qwerty", "commonly used or breached"),
        ("passwordpassword", "commonly used or breached"),
    ];
    for (n, (password, rule)) in refused.iter().enumerate() {
        let email = format!("user{n}@example.com");
        let output = add(&db, &email, password).await;
        assert!(!output.status.success(), "{password:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(rule), "{password:?}: {stderr}");
        // ("password" is also the field's name in every refusal.)
        if *password != "password" {
            assert!(
                !stderr.contains(password),
                "the refusal echoes {password:?}"
            );
        }
    }
    // 15 random characters pass.
    add_ok(&db, "random@example.com", "kX9#mQ2vL!pR7wZ").await;

    let app = TestApp::spawn_on(db, &[]).await;
    for (n, (password, _)) in refused.iter().enumerate() {
        let status = app
            .login(&format!("user{n}@example.com"), password)
            .await
            .unwrap_err();
        assert_status(&status, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    app.login("random@example.com", "kX9#mQ2vL!pR7wZ")
        .await
        .expect("the accepted password logs in");
}

/// A password enrolled in NFC logs in when typed in NFD (and the other way round): both are
/// hashed in their NFKC form.
async fn a_password_logs_in_whatever_its_unicode_normalisation(backend: Backend) {
    const NFC: &str = "caf\u{e9} cr\u{e8}me br\u{fb}l\u{e9}e";
    const NFD: &str = "cafe\u{301} cre\u{300}me bru\u{302}le\u{301}e";
    let db = TestDatabase::create(backend).await;
    add_ok(&db, "nfc@example.com", NFC).await;
    add_ok(&db, "nfd@example.com", NFD).await;
    let app = TestApp::spawn_on(db, &[]).await;
    app.login("nfc@example.com", NFD)
        .await
        .expect("NFC enrolled, NFD typed");
    app.login("nfd@example.com", NFC)
        .await
        .expect("NFD enrolled, NFC typed");
}

async fn a_user_disabled_by_the_cli_can_no_longer_log_in(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    add_ok(&db, "alice@example.com", PASSWORD).await;
    assert_succeeded(&run_authd(&db, &["user", "disable", "alice@example.com"], "").await);
    let unknown = run_authd(&db, &["user", "disable", "bob@example.com"], "").await;
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("no user with email bob@example.com"),
        "{stderr}"
    );

    let app = TestApp::spawn_on(db, &[]).await;
    assert_refused(
        app.login("alice@example.com", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
}
