//! Login: credentials in, a session and its first tokens out.

use crate::common;

use authd::store::entity::{refresh_token, session};
use common::{
    Backend, PASSWORD, TestApp, assert_status,
    rows::{row_counts, token_parts},
    validate,
};
use sea_orm::{Database, EntityTrait as _};
use tonic::Code;

on_both_backends!(
    login_returns_a_complete_token_pair,
    login_stores_the_session_and_only_the_hash_of_its_refresh_token,
    each_login_adds_one_session_and_one_refresh_row,
    wrong_password_unknown_email_and_disabled_user_answer_identically,
    malformed_input_is_an_invalid_argument,
    email_is_matched_case_insensitively_and_trimmed,
    login_works_with_production_argon2_parameters,
);

async fn login_returns_a_complete_token_pair(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.user_with_session("alice@example.com").await;

    assert_eq!(login.token_type, "Bearer");
    assert_eq!(login.expires_in, 15 * 60);
    assert_eq!(login.refresh_expires_in, 7 * 24 * 3600);
    assert_eq!(
        login.refresh_token.len(),
        119,
        "format, session, generation, 256-bit secret and tag in base64url"
    );
    let session_id = uuid::Uuid::parse_str(&login.session_id).expect("session_id is a UUID");

    let validated = validate(&app.client, &login.access_token)
        .await
        .expect("fresh access token validates");
    assert_eq!(validated.session_id, session_id.to_string());
    assert_eq!(validated.email, "alice@example.com");
    let (issued, expires) = (validated.issued_at.unwrap(), validated.expires_at.unwrap());
    assert_eq!(expires.seconds - issued.seconds, login.expires_in);
}

async fn login_stores_the_session_and_only_the_hash_of_its_refresh_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.user_with_session("alice@example.com").await;
    let db = Database::connect(app.db.url()).await.unwrap();

    let sessions = session::Entity::find().all(&db).await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].id.to_string(), login.session_id);
    assert!(sessions[0].revoked_at.is_none());

    let tokens = refresh_token::Entity::find().all(&db).await.unwrap();
    assert_eq!(tokens.len(), 1);
    let token = &tokens[0];
    let parts = token_parts(&app.db, &login.refresh_token);
    assert_eq!(token.session_id, sessions[0].id);
    assert_eq!(parts.session_id, sessions[0].id);
    assert_eq!((token.generation, parts.generation), (1, 1));
    assert_eq!(
        token.secret_hash, parts.secret_hash,
        "only the secret's hash"
    );
    assert!(!token.retried);
    let lifetime = token.expires_at - token.rotated_at;
    assert_eq!(lifetime.num_seconds(), login.refresh_expires_in);
}

/// A login writes a bounded, constant number of rows: one session and its refresh row.
async fn each_login_adds_one_session_and_one_refresh_row(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.add_user("alice@example.com", PASSWORD).await;
    let mut before = row_counts(&app.db).await;
    for _ in 0..3 {
        app.login("alice@example.com", PASSWORD).await.unwrap();
        let after = row_counts(&app.db).await;
        for (table, count) in &mut before {
            let added = usize::from(["sessions", "refresh_tokens"].contains(table));
            assert_eq!(after[table], *count + added as i64, "rows in {table}");
            *count = after[table];
        }
    }
}

async fn wrong_password_unknown_email_and_disabled_user_answer_identically(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.add_user("alice@example.com", PASSWORD).await;
    app.add_user("bob@example.com", PASSWORD).await;
    app.disable_user("bob@example.com").await;

    let wrong_password = app
        .login("alice@example.com", "not the password")
        .await
        .unwrap_err();
    let unknown_email = app.login("nobody@example.com", PASSWORD).await.unwrap_err();
    let disabled_user = app.login("bob@example.com", PASSWORD).await.unwrap_err();

    for status in [&wrong_password, &unknown_email, &disabled_user] {
        assert_status(status, Code::Unauthenticated, "INVALID_CREDENTIALS");
        assert_eq!(status.message(), "invalid credentials");
    }
    assert_eq!(wrong_password.details(), unknown_email.details());
    assert_eq!(wrong_password.details(), disabled_user.details());
}

async fn malformed_input_is_an_invalid_argument(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let long_email = format!("{}@example.com", "a".repeat(250));
    let long_password = "p".repeat(1025);
    let cases = [
        ("", PASSWORD, "email"),
        ("   ", PASSWORD, "email"),
        (long_email.as_str(), PASSWORD, "email"),
        ("alice@example.com", "", "password"),
        ("alice@example.com", long_password.as_str(), "password"),
    ];
    for (email, password, field) in cases {
        let status = app.login(email, password).await.unwrap_err();
        assert_status(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert!(
            status.message().starts_with(field),
            "{field} case answered {:?}",
            status.message()
        );
    }
}

async fn email_is_matched_case_insensitively_and_trimmed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.add_user("Alice@Example.com", PASSWORD).await;
    let login = app
        .login("  ALICE@example.COM ", PASSWORD)
        .await
        .expect("login");
    let validated = validate(&app.client, &login.access_token).await.unwrap();
    assert_eq!(validated.email, "alice@example.com");
}

async fn login_works_with_production_argon2_parameters(backend: Backend) {
    let production = [
        ("AUTH_ARGON2_MEMORY_KIB", "19456"),
        ("AUTH_ARGON2_ITERATIONS", "2"),
    ];
    let app = TestApp::spawn_with(backend, &production).await;
    app.add_user("alice@example.com", PASSWORD).await;
    app.login("alice@example.com", PASSWORD)
        .await
        .expect("login");
    let status = app
        .login("alice@example.com", "wrong password")
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "INVALID_CREDENTIALS");

    let stored = common::rows::password_hash(&app.db, "alice@example.com").await;
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stored}"
    );
}
